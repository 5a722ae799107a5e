"""The invariants of each step, as named predicates over NumPy arrays.

Each invariant measures how far an output is from satisfying it: 0.0 means it holds exactly.
The index bookkeeping and masking invariants must measure 0 in every dtype; the others are
compared with the tolerance model of `conformance/suite/tolerance.py`. They work on any
backend's output once converted to NumPy, so the suite and a reader share one definition.
"""

from __future__ import annotations

import numpy as np

from spec.config import AttentionConfig
from spec.masks import visible


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def attendable(config: AttentionConfig, B: int, Tq: int, Tk: int,
               key_padding_mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean [B, 1, Tq, Tk]: True where query i may attend to key j."""
    return np.ones((B, 1, Tq, Tk), dtype=bool) & visible(Tq, Tk, config.causal, key_padding_mask, config.window)  # (B, 1, Tq, Tk)


def split_matches_index(x: np.ndarray, split: np.ndarray, n_heads: int) -> float:
    """split(x)[b, t, h, d] == x[b, t, h*head_dim + d] for every index."""
    B, T, d_out = x.shape
    if split.shape != (B, T, n_heads, d_out // n_heads):
        return float("inf")
    hd = d_out // n_heads
    idx = np.arange(n_heads)[:, None] * hd + np.arange(hd)[None, :]  # (H, hd)
    return float(np.max(np.abs(_f64(split) - _f64(x)[:, :, idx]), initial=0.0))


def merge_inverts_split(x: np.ndarray, merged: np.ndarray) -> float:
    """concat_heads(permute_back(group_by_heads(split_heads(x)))) == x exactly."""
    if merged.shape != x.shape:
        return float("inf")
    return float(np.max(np.abs(_f64(merged) - _f64(x)), initial=0.0))


def grouped_matches_index(split: np.ndarray, grouped: np.ndarray) -> float:
    """group_by_heads(s)[b, h, t, d] == s[b, t, h, d]: a pure permutation, no arithmetic."""
    if grouped.shape != (split.shape[0], split.shape[2], split.shape[1], split.shape[3]):
        return float("inf")
    return float(np.max(np.abs(_f64(grouped) - _f64(split).transpose(0, 2, 1, 3)), initial=0.0))


def permute_back_restores_order(grouped: np.ndarray, back: np.ndarray) -> float:
    """permute_back(c)[b, t, h, d] == c[b, h, t, d]: token order restored."""
    if back.shape != (grouped.shape[0], grouped.shape[2], grouped.shape[1], grouped.shape[3]):
        return float("inf")
    return float(np.max(np.abs(_f64(back) - _f64(grouped).transpose(0, 2, 1, 3)), initial=0.0))


def masked_weights_are_zero(weights: np.ndarray, ok: np.ndarray) -> float:
    """Weights at masked positions (future keys, padded keys) are exactly 0."""
    return float(np.max(np.abs(_f64(weights)) * ~ok, initial=0.0))


def weights_nonnegative(weights: np.ndarray) -> float:
    """Every attention weight is >= 0 (and not NaN)."""
    w = _f64(weights)
    if np.isnan(w).any():
        return float("inf")
    return float(max(0.0, -np.min(w, initial=0.0)))


def context_in_convex_hull(context: np.ndarray, V: np.ndarray, ok: np.ndarray) -> float:
    """Each context vector lies within the per-feature range of the value rows it may attend to.

    Rows with no attendable key must be 0. Returns the largest excursion outside the range.
    """
    c, v = _f64(context), _f64(V)  # (B, H, Tq, hd), (B, H, Tk, hd)
    okv = ok[..., None]  # (B, 1, Tq, Tk, 1)
    vv = v[:, :, None, :, :]  # (B, H, 1, Tk, hd)
    hi = np.max(np.where(okv, vv, -np.inf), axis=3)  # (B, H, Tq, hd)
    lo = np.min(np.where(okv, vv, np.inf), axis=3)
    empty = ~ok.any(axis=-1)[..., None]  # (B, 1, Tq, 1)
    hi, lo = np.where(empty, 0.0, hi), np.where(empty, 0.0, lo)
    excursion = np.maximum(c - hi, lo - c)
    if np.isnan(excursion).any():
        return float("inf")
    return float(max(0.0, np.max(excursion, initial=0.0)))


def all_finite(y: np.ndarray) -> float:
    """No NaN or inf in an output computed from finite inputs."""
    return 0.0 if np.isfinite(_f64(y)).all() else float("inf")
