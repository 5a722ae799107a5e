"""The score terms as NumPy arrays for the peers' library calls (JAX's `bias=`, the ONNX Attention
operator's float `attn_mask`): the bias (ALiBi or a bias array), the attention mask as booleans, and
the sinks as one more key.

The libraries add the arrays and run the softmax; these only lay the config out as the libraries
take it. ALiBi is `slope_h * (j - p)` with p = i + Tk - Tq (bottom-right, as the spec), the slopes
by the spec's recipe (`spec.scores.alibi_slopes`, pure arithmetic), computed in float64 and
rounded once to the dtype under test by the caller. A sink is one more key with k = v = 0: its score
is q . 0 * scale = 0, so the bias's column for it, head h's sink logit, is its whole logit; it joins
the softmax's denominator and adds nothing to the context (the way torch-sdpa takes sinks).
"""

from __future__ import annotations

import numpy as np

from spec.config import AttentionConfig
from spec.scores import BiasArray, alibi_slopes


def bias_4d(config: AttentionConfig, Tq: int, Tk: int) -> np.ndarray | None:
    """float64 bias with 4 axes, broadcastable to [B, H, Tq, Tk], or None without one: ALiBi as
    [1, H, Tq, Tk]; a bias array with leading axes of 1 added (numpy's broadcasting, aligned on the right)."""
    if config.bias is None:
        return None
    if isinstance(config.bias, BiasArray):
        a = config.bias.array
        return a.reshape((1,) * (4 - a.ndim) + a.shape)  # (b, h, tq, tk), each 1 or full
    p = np.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, 1): each query's position among the keys
    j = np.arange(Tk)[None, :]  # (1, Tk)
    return (alibi_slopes(config.n_heads)[:, None, None] * (j - p)[None])[None]  # (1, H, Tq, Tk)


def allowed(config: AttentionConfig, Tq: int, Tk: int, key_padding_mask: np.ndarray | None) -> np.ndarray:
    """Bool [B or 1, 1, Tq, Tk], True = may attend: causal, the window (bottom-right, as the spec) and
    key padding; with sinks [B or 1, 1, Tq, Tk + 1], the sink key's column last and True (never masked)."""
    p = np.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, 1)
    j = np.arange(Tk)[None, :]  # (1, Tk)
    ok = np.ones((Tq, Tk), dtype=bool)
    if config.causal:
        ok &= j <= p
    if config.window is not None:
        left, right = config.window
        ok &= (j >= p - left) & (j <= p + right)
    ok = ok[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        ok = ok & np.asarray(key_padding_mask, dtype=bool)[:, None, None, :]  # (B, 1, Tq, Tk)
    if config.sinks is not None:
        ok = np.concatenate([ok, np.ones(ok.shape[:3] + (1,), dtype=bool)], axis=-1)  # (B or 1, 1, Tq, Tk + 1)
    return ok


def with_sink_column(bias: np.ndarray | None, config: AttentionConfig, Tq: int, Tk: int) -> np.ndarray:
    """float64 [b, H, Tq, Tk + 1]: the bias (zeros without one) and head h's sink logit as the last
    key's column (the sink key, k = v = 0). b is the bias's batch axis (1 or B)."""
    H = config.n_heads
    b = np.zeros((1, 1, 1, 1)) if bias is None else bias
    b = np.broadcast_to(b, (b.shape[0], H, Tq, Tk))  # (b, H, Tq, Tk)
    sink = np.broadcast_to(np.asarray(config.sinks, dtype=np.float64)[None, :, None, None],
                           (b.shape[0], H, Tq, 1))  # (b, H, Tq, 1)
    return np.concatenate([b, sink], axis=-1)  # (b, H, Tq, Tk + 1)
