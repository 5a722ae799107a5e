"""The golden and the plain reference of KV-cache decoding, and the top-left-aligned wrong answer.

A decoding run is a prefill of the first t tokens, then chunks of n_1, n_2, ... new tokens
decoded in turn (`Case.extra["prefill"]`, `["chunks"]`). Its golden is the spec's own cache
code (`spec.cache`, which tests/test_cache.py holds equal to the full forward) in float64, or
long double when float64 is under test; its plain reference is that code in dtype D, on the
inputs and on ulp-moved inputs, plus each correct order of steps 7 to 9 for queries apart
from keys (`conformance.suite.orders.CONTEXT_ORDERS`: scale on q with the context normalised
late; FlashAttention's online softmax): the rounding a correct decoder in D may have.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from conformance.suite.case import Case
from conformance.suite.orders import CONTEXT_ORDERS
from conformance.suite.reference import golden_and_plain
from spec import steps as S
from spec.block import qkv_heads
from spec.cache import decode, prefill
from spec.config import AttentionConfig
from spec.params import Params


def _part(kpm: np.ndarray | None, a: int, b: int) -> np.ndarray | None:
    return None if kpm is None else kpm[:, a:b]  # (B, b - a)


def decoded(x: np.ndarray, params: Params, config: AttentionConfig, key_padding_mask: np.ndarray | None,
            t: int, chunks: tuple[int, ...]) -> np.ndarray:
    """The spec's outputs of tokens t..T-1: prefill x[:, :t], then decode the chunks in turn: (B, T - t, d_out)."""
    cache = prefill(x[:, :t], params, config, _part(key_padding_mask, 0, t))
    ys, a = [], t
    for n in chunks:
        y, cache = decode(x[:, a:a + n], cache, params, config, _part(key_padding_mask, a, a + n))
        ys.append(y)  # (B, n, d_out)
        a += n
    return np.concatenate(ys, axis=1)  # (B, T - t, d_out)


def decoded_by(context: Callable) -> Callable:
    """`decoded` with steps 7 to 9 of each chunk done by `context(q, k, v, config, kpm)` instead."""

    def run(x: np.ndarray, params: Params, config: AttentionConfig, key_padding_mask: np.ndarray | None,
            t: int, chunks: tuple[int, ...]) -> np.ndarray:
        q, k, v = qkv_heads(x, params, config)  # (B, H, T, hd): every token's heads at once
        ys, a = [], t
        for n in chunks:
            b = a + n  # the chunk's queries are the last n of the b keys
            ctx = context(q[:, :, a:b], k[:, :, :b], v[:, :, :b], config, _part(key_padding_mask, 0, b))
            ys.append(S.out_proj(S.merge_heads(ctx), params))  # (B, n, d_out)
            a = b
        return np.concatenate(ys, axis=1)  # (B, T - t, d_out)

    run.__name__ = f"decoded_by_{context.__name__}"
    return run


DECODE_ORDERS: tuple[Callable, ...] = tuple(decoded_by(c) for c in CONTEXT_ORDERS)


def decode_golden_and_plain(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The spec's decoding of the case (prefill and chunks from case.extra), in float64 and in D.

    The decode orders run on the exact inputs as well as on moved ones: with scores in the
    thousands an order's error on given inputs is a draw that moved inputs need not repeat
    (seed 1091520489: every correct backend's decoding erred 4.92e-14 at float64, exactly as
    context_scale_on_q_late_norm on the exact inputs, while the plain runs on moved inputs erred
    at most 4.33e-15; tests/data/regressions)."""
    return golden_and_plain(decoded, case.dtype, case.x, case.params, case.config, case.key_padding_mask,
                            case.extra["prefill"], tuple(case.extra["chunks"]), orders=DECODE_ORDERS,
                            exact_orders=True)


def _kv(x: np.ndarray, params: Params, config: AttentionConfig) -> tuple[np.ndarray, np.ndarray]:
    _, k, v = qkv_heads(x, params, config)  # (B, H, t, hd) each
    return k, v


def kv_golden_and_plain(case: Case, t: int) -> tuple[tuple, tuple]:
    """The spec's cache content after t tokens, K and V [B, H, t, hd], in float64 and in D."""
    return golden_and_plain(_kv, case.dtype, case.x[:, :t], case.params, case.config, orders=())


def _context_top_left(q: np.ndarray, k: np.ndarray, v: np.ndarray, config: AttentionConfig,
                      key_padding_mask: np.ndarray | None) -> np.ndarray:
    # top-left: query i sees keys j <= i, the first n rows of the (Tk, Tk) causal square
    B, H, n, hd = q.shape
    square = np.zeros((B, H, k.shape[2], hd), dtype=q.dtype)  # (B, H, Tk, hd)
    square[:, :, :n] = q
    w = S.attn_weights(S.attn_scores(square, k), config, key_padding_mask)[:, :, :n]  # (B, H, n, Tk)
    return S.context(w, v)  # (B, H, n, hd)


decoded_top_left = decoded_by(_context_top_left)


def top_left_weights(attn_scores: np.ndarray, config: AttentionConfig,
                     key_padding_mask: np.ndarray | None = None) -> np.ndarray:
    """Step 8 with the causal mask aligned top-left (query i sees keys j <= i): the wrong answer."""
    B, H, n, Tk = attn_scores.shape
    square = np.zeros((B, H, Tk, Tk), dtype=attn_scores.dtype)  # the first n rows of the causal square
    square[:, :, :n] = attn_scores
    return S.attn_weights(square, config, key_padding_mask)[:, :, :n]  # (B, H, n, Tk)


TOP_LEFT = ("the outputs match a causal mask aligned top-left (query i sees keys j <= i, as is_causal=True "
            "does when Tq != Tk): the spec aligns it bottom-right (new token i is position Tk - Tq + i and "
            "sees keys j <= Tk - Tq + i)")


def close_to(got: np.ndarray, want: np.ndarray, allowed: float) -> bool:
    """max |got - want| / max |want| <= allowed."""
    scale = float(np.abs(want).max(initial=0.0)) or 1.0
    return float(np.abs(got - want).max(initial=0.0)) / scale <= allowed


#: Largest B x H x T x T for the top-left diagnosis, which builds the (Tk, Tk) causal square:
#: 2^26 elements (512 MiB in float64) holds T = 4096 at B x H = 4; the 2^16 + 1-key decode
#: (4.3e9 elements, 32 GiB) goes without it.
TOP_LEFT_MAX_ELEMENTS = 2**26


def looks_top_left(case: Case, got: np.ndarray, allowed: float) -> bool:
    """True when a causal decoding's output is within `allowed` of the top-left-aligned answer
    (False without trying past TOP_LEFT_MAX_ELEMENTS)."""
    if not case.config.causal or case.B * case.config.n_heads * case.T**2 > TOP_LEFT_MAX_ELEMENTS:
        return False
    want = decoded_top_left(case.x, case.params, case.config, case.key_padding_mask,
                            case.extra["prefill"], tuple(case.extra["chunks"]))
    return close_to(got, want, allowed)
