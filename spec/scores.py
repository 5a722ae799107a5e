"""Score terms beside the masks: the ALiBi bias and attention sinks (docs/bias-and-sinks.md).

Step 8 applies them in this order: scale, softcap, **bias**, the masks, then the softmax with the
**sinks** in its denominator.

ALiBi (Press et al., "Train Short, Test Long"; BLOOM, MPT) adds `slope_h * (j - p)` to query i's
score of key j in head h, where p = i + Tk - Tq is the query's position among the keys (aligned
bottom-right, as the causal mask: with a KV cache the positions count from the first cached
token). Visible keys of a causal query have j <= p, so the bias is <= 0 and grows more negative
with distance. The slopes of H heads are the geometric sequence 2^(-8/H), 2^(-16/H), ...,
2^(-8) when H is a power of two; otherwise the closest power of two below, n, gives its n slopes
and the remaining H - n are every other slope of 2n (2^(-4/n), 2^(-12/n), ...), as the ALiBi
reference code and BLOOM compute them.

Sinks (gpt-oss; StreamingLLM's learnable sink): one logit sigma_h per head, an extra term in the
softmax's denominator with no value: w_ij = exp(s_ij) / (sum_k exp(s_ik) + exp(sigma_h)), so a
row's weights sum to less than one. A query with no visible key gets weights 0 (the sink takes
all the weight, and the sink has no value): a zero context, the same answer the spec gives
without sinks, so a fully masked row is 0 whether or not a model has sinks.
"""

from __future__ import annotations

import math

import numpy as np

#: The named biases the spec knows: ALiBi's per-head linear penalty (beside None and a BiasArray).
BIASES = ("alibi",)


class BiasArray:
    """A general float bias: a finite float64 array broadcastable to [B, H, Tq, Tk] (numpy's rules,
    aligned on the right: [H, 1, Tk], [B, 1, Tq, Tk], ...), added to the scaled (capped) scores
    before the masks. Immutable, compared and hashed by value, so a config holding it stays a value.
    Its gradient (`Grads.dbias`) has its shape: summed over the axes it was broadcast on."""

    __slots__ = ("array",)

    def __init__(self, array: object):
        a = np.array(array, dtype=np.float64)  # a copy: the caller's array may change, this may not
        if a.ndim < 1 or a.ndim > 4 or not np.isfinite(a).all():
            raise ValueError(f"a bias array must be finite with 1 to 4 axes broadcasting to [B, H, Tq, Tk], "
                             f"got shape {a.shape}" + ("" if np.isfinite(a).all() else " with non-finite values"))
        a.setflags(write=False)
        object.__setattr__(self, "array", a)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("BiasArray is immutable")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BiasArray) and self.shape == other.shape and np.array_equal(self.array, other.array)

    def __hash__(self) -> int:
        return hash((self.shape, self.array.tobytes()))

    def __repr__(self) -> str:
        return f"BiasArray({'x'.join(map(str, self.shape))})"


def check_bias(bias: object) -> str | BiasArray | None:
    """The bias as one of BIASES, a BiasArray (an array is wrapped), or None; ValueError naming the bad value."""
    if bias is None or isinstance(bias, BiasArray):
        return bias
    if isinstance(bias, np.ndarray):
        return BiasArray(bias)
    if bias in BIASES:
        return bias  # type: ignore[return-value]
    raise ValueError(f"bias={bias!r}: must be None, one of {', '.join(map(repr, BIASES))} "
                     f"('alibi': slope_h * (j - p) added to the scaled scores) or a float array "
                     f"broadcastable to [B, H, Tq, Tk]")


def reduce_to(d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """d [B, H, Tq, Tk] summed over the axes an array of `shape` was broadcast on: the gradient of a
    bias of that shape (numpy's broadcasting: aligned on the right, size-1 axes stretched)."""
    lead = d.ndim - len(shape)
    out = d.sum(axis=tuple(range(lead))) if lead else d  # axes the bias does not have
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and out.shape[i] != 1)  # size-1 axes stretched
    return (out.sum(axis=axes, keepdims=True) if axes else out).reshape(shape)


def check_sinks(sinks: object, n_heads: int) -> tuple[float, ...] | None:
    """The sinks as a tuple of n_heads floats (each finite or -inf), or None; ValueError naming the
    bad value."""
    if sinks is None:
        return None
    ok = isinstance(sinks, (tuple, list, np.ndarray)) and len(sinks) == n_heads
    vals: list[float] = []
    if ok:
        for s in sinks:
            if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)):
                ok = False
                break
            f = float(s)
            if math.isnan(f) or f == math.inf:
                ok = False
                break
            vals.append(f)
    if not ok:
        raise ValueError(f"sinks={sinks!r}: must be n_heads={n_heads} logits, one per head, each finite or "
                         f"-inf (-inf: no sink in that head), or None")
    return tuple(vals)


def alibi_slopes(H: int) -> np.ndarray:
    """ALiBi's slopes for H heads, float64 [H] (see the module docstring)."""
    def powers(n: int) -> list[float]:  # n a power of two: 2^(-8/n), 2^(-16/n), ..., 2^(-8)
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    n = 1 << (H.bit_length() - 1)  # the closest power of two <= H
    return np.array(powers(n) + powers(2 * n)[0::2][: H - n])  # (H,)


def alibi_bias(H: int, Tq: int, Tk: int) -> np.ndarray:
    """float64 [H, Tq, Tk]: slope_h * (j - p), p = i + Tk - Tq the query's position."""
    p = np.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, 1)
    j = np.arange(Tk)[None, :]  # (1, Tk)
    return alibi_slopes(H)[:, None, None] * (j - p)[None].astype(np.float64)  # (H, Tq, Tk)


def bias_values(bias: str | BiasArray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The bias for scores of `shape` [B, H, Tq, Tk], float64, broadcastable to it; None: no bias.
    ValueError naming both shapes when a bias array does not broadcast."""
    if bias is None:
        return None
    if isinstance(bias, BiasArray):
        try:
            np.broadcast_shapes(bias.shape, shape)
        except ValueError:
            raise ValueError(f"the bias array of shape {bias.shape} does not broadcast to the scores' "
                             f"[B, H, Tq, Tk] = {shape}") from None
        if np.broadcast_shapes(bias.shape, shape) != tuple(shape):
            raise ValueError(f"the bias array of shape {bias.shape} would widen the scores' {shape}")
        return bias.array
    _, H, Tq, Tk = shape
    return alibi_bias(H, Tq, Tk)  # (H, Tq, Tk)


def add_bias(scaled: np.ndarray, bias: str | BiasArray | None) -> np.ndarray:
    """The scaled (and capped) scores [B, H, Tq, Tk] plus the bias, in their dtype (the bias
    rounded to it once); None: unchanged."""
    b = bias_values(bias, scaled.shape)
    if b is None:
        return scaled
    return (scaled + b.astype(scaled.dtype)).astype(scaled.dtype, copy=False)


def sink_logits(sinks: tuple[float, ...] | None, dtype: np.dtype) -> np.ndarray | None:
    """[1, H, 1, 1] sink logits in dtype, broadcasting over a [B, H, Tq, Tk] score tensor; None: none."""
    if sinks is None:
        return None
    return np.asarray(sinks, dtype=np.float64).astype(dtype)[None, :, None, None]  # (1, H, 1, 1)
