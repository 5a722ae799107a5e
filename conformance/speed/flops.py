"""Useful floating-point operations of one multi-head self-attention block (docs/speed.md).

"Useful" means the work the math needs, counted the same way for every backend, whatever it
actually executes: a backend that computes the masked half of causal attention and throws it
away does not get credit for it, and one that skips it is not penalised.
"""

from __future__ import annotations


def useful_flops(B: int, T: int, d_in: int, d_out: int, n_heads: int, causal: bool = True) -> float:
    """FLOPs of the block: projections, scores and context, output projection.

    2*B*T*d_in*3*d_out (Q, K, V projections) + 4*B*H*T*T*head_dim (scores Q K^T and the
    weighted sum of V, 2 FLOPs per multiply-add each) + 2*B*T*d_out*d_out (output
    projection). Causal attention only needs the T*(T+1)/2 pairs j <= i, so the attention
    term is scaled by (T+1)/(2T). Softmax, scaling and biases are O(B*H*T*T) or less and left
    out, as FlashAttention's benchmarks do.
    """
    hd = d_out // n_heads
    proj = 2.0 * B * T * d_in * 3 * d_out
    attn = 4.0 * B * n_heads * T * T * hd
    if causal:
        attn *= (T + 1) / (2.0 * T)
    out = 2.0 * B * T * d_out * d_out
    return proj + attn + out


def gflops(flops: float, seconds: float | None) -> float | None:
    """GFLOP/s for `flops` done in `seconds`; None without a (positive) time."""
    if seconds is None or seconds <= 0:
        return None
    return flops / seconds / 1e9
