"""The twelve steps of multi-head self-attention, one reference function each.

Read beside docs/spec-decisions.md; spec/table.py says what each step takes
and returns. Symbols: B batch, T tokens (Tq queries and Tk
keys where they may differ, as in KV-cache decoding), d_in input features, d_out output
features, H heads, head_dim = d_out // H, Hkv K/V heads (grouped-query attention; Hkv = H
unless grouped) and d_kv = Hkv * head_dim. Every function is plain NumPy and keeps its input's
dtype, so the same code is the float64 golden and the "plain reference in dtype D" that the
tolerance model compares against. Backends expose the same steps under the same names.
"""

from __future__ import annotations

import numpy as np

from spec.config import AttentionConfig, validate_input, validate_key_padding_mask
from spec.masks import causal_mask, softcap, visible
from spec.params import Params
from spec.precise import matmul_longdouble
from spec.scores import add_bias, sink_logits
from spec.params import init_params as _init_params

__all__ = ["matmul", "max_over_keys", "heads", "merge_heads", "causal_mask", "visible", "softcap", "input_matrix",
           "head_dim", "init_params", "project_qkv", "split_heads", "group_by_heads", "repeat_kv", "attn_scores",
           "attn_weights", "sink_weight", "context", "permute_back", "concat_heads", "out_proj"]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in a's dtype: ml_dtypes' bfloat16 matmul would otherwise return float32.

    float16 goes through float32 BLAS and is rounded once: NumPy's own float16 matmul also
    accumulates in float32 and rounds once, in an unblocked loop 10x slower (the same numbers but
    where the other order of the float32 sums tips a near-tie: one float16 ulp, rarely).
    Long double (the float64 golden) goes through float64 BLAS too, split so that it is at least
    as accurate as NumPy's loop (spec/precise.py).
    """
    if a.dtype == np.float16 and b.dtype == np.float16:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)
    if a.dtype == np.longdouble and b.dtype == np.longdouble:  # the float64 golden's: no BLAS either
        return matmul_longdouble(a, b)
    return np.matmul(a, b).astype(a.dtype, copy=False)



def max_over_keys(a: np.ndarray) -> np.ndarray:
    """a.max(axis=-1, keepdims=True) in a's dtype. float16 and bfloat16 take it in float32: a
    maximum is one of its inputs, which float32 holds exactly, so the values are the same (but a
    zero maximum's sign, which exp(s - max) does not see), where NumPy's float16 loop and
    ml_dtypes' bfloat16 loop are 3x and 20x slower than float32's."""
    if a.dtype.itemsize == 2:
        return a.astype(np.float32).max(axis=-1, keepdims=True).astype(a.dtype)
    return a.max(axis=-1, keepdims=True)


def input_matrix(x: np.ndarray, config: AttentionConfig) -> np.ndarray:
    """Step 1. The input matrix: x [B, T, d_in], one row per token.

    Contract: rank 3, a float dtype, B, T >= 1, last axis d_in; else ValueError.
    """
    validate_input(x, config)
    return x


def head_dim(d_out: int, n_heads: int) -> int:
    """Step 2. Decide d_out and n_heads: head_dim = d_out // n_heads.

    Contract: n_heads divides d_out, both positive; else ValueError naming them.
    """
    return AttentionConfig(d_in=1, d_out=d_out, n_heads=n_heads).head_dim


def init_params(config: AttentionConfig, seed: int = 0) -> Params:
    """Step 3. Initialise W_q [d_out, d_in], W_k, W_v [d_kv, d_in] (and W_o [d_out, d_out], b_o [d_out]).

    As `nn.Linear`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    """
    return _init_params(config, seed)


def project_qkv(x: np.ndarray, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4. Q = W_q(x), K = W_k(x), V = W_v(x): [B, T, d_in] -> [B, T, d_out], 2 x [B, T, d_kv].

    `nn.Linear` layout: y = x @ W.T (+ b when qkv_bias). K and V have d_kv = Hkv * head_dim
    columns (d_out unless grouped).
    """
    Q = matmul(x, params.W_q.T)  # (B, T, d_out)
    K = matmul(x, params.W_k.T)  # (B, T, d_kv)
    V = matmul(x, params.W_v.T)  # (B, T, d_kv)
    if params.b_q is not None:
        Q, K, V = Q + params.b_q, K + params.b_k, V + params.b_v
    return Q, K, V


def split_heads(Q: np.ndarray, n_heads: int) -> np.ndarray:
    """Step 5. Unroll the last dim into heads: [B, T, d_out] -> [B, T, H, head_dim].

    Head h owns features h*head_dim .. (h+1)*head_dim - 1 of each token. K and V are split
    into their Hkv heads: `n_heads` is then n_kv_heads (the step table passes it).
    """
    B, T, d_out = Q.shape
    return Q.reshape(B, T, n_heads, d_out // n_heads)  # (B, T, H, head_dim)


def group_by_heads(Q: np.ndarray) -> np.ndarray:
    """Step 6. Group by heads: [B, T, H, head_dim] -> [B, H, T, head_dim]."""
    return Q.transpose(0, 2, 1, 3)  # (B, H, T, head_dim)


def repeat_kv(K: np.ndarray, n_heads: int) -> np.ndarray:
    """Grouped-query attention: each of the Hkv K/V heads repeated for its group of query heads.

    [B, Hkv, T, hd] -> [B, H, T, hd]; query head h reads K/V head h // (H // Hkv): consecutive
    groups, as PyTorch's `enable_gqa`, Hugging Face's `repeat_kv` and `jnp.repeat` do. With
    Hkv = H it returns K itself.
    """
    Hkv = K.shape[1]
    if n_heads % Hkv != 0:
        raise ValueError(f"{Hkv} K/V heads do not divide {n_heads} query heads; n_kv_heads must divide n_heads")
    return K if Hkv == n_heads else np.repeat(K, n_heads // Hkv, axis=1)  # (B, H, T, hd)


def attn_scores(Q: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Step 7. attn_scores = Q @ K^T per head: [B, H, Tq, hd], [B, Hkv, Tk, hd] -> [B, H, Tq, Tk].

    Grouped K/V heads (Hkv < H): query head h is scored against K head h // (H // Hkv).
    """
    K = repeat_kv(K, Q.shape[1])  # (B, H, Tk, hd): each K head once per query head of its group
    return matmul(Q, K.swapaxes(-2, -1))  # (B, H, Tq, Tk)


def attn_weights(
    attn_scores: np.ndarray,
    config: AttentionConfig,
    key_padding_mask: np.ndarray | None = None,
    dropout_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Step 8. Scale, softcap, bias, mask, softmax with sinks (and dropout): [B, H, Tq, Tk] -> [B, H, Tq, Tk].

    The score modifiers apply here, in this order (docs/spec-decisions.md, "Score modifiers"):
    1. scale by 1/sqrt(head_dim);
    2. softcap c * tanh(s / c) when config.softcap (Gemma 2), on the scaled scores;
    3. the bias when config.bias ("alibi": slope_h * (j - p), spec/scores.py), on the capped scores;
    4. the masks: causal (j > p), the sliding window (config.window, spec/masks.py) and padding
       (key_padding_mask[b, j] False): masked positions get weight exactly 0;
    5. the softmax, the row maximum subtracted before exp, so finite scores give finite weights;
       with config.sinks, head h's sink logit joins the maximum and the denominator only:
       w_ij = exp(s_ij - m) / (sum_k exp(s_ik - m) + exp(sink_h - m)), m = max(max_k s_ik, sink_h).
    A row with no attendable key is all zeros (as SDPA and FlashAttention decide; the naive -inf
    softmax gives NaN; with a sink, the sink takes all the weight). dropout_mask [B, H, Tq, Tk],
    True = kept, applies inverted dropout: kept weights are scaled by 1/(1 - dropout_p).
    The mask is a select (`np.where`), not an added -1e9 nor a product with 0: a masked score
    that is NaN or +-inf (a padded or future token's non-finite input) becomes -inf and its
    weight exactly 0, as any other masked score; step 9 keeps that key's value out likewise.
    """
    e, sink_e, total = _softmax_terms(attn_scores, config, key_padding_mask)
    attn_weights = e / np.where(total > 0, total, 1)  # fully masked rows stay 0
    if dropout_mask is not None:
        keep = attn_weights.dtype.type(1.0 / (1.0 - config.dropout_p))
        attn_weights = np.where(dropout_mask, attn_weights * keep, 0).astype(attn_weights.dtype)
    return attn_weights.astype(attn_scores.dtype, copy=False)


def sink_weight(attn_scores: np.ndarray, config: AttentionConfig,
                key_padding_mask: np.ndarray | None = None) -> np.ndarray:
    """Step 8's weight on each head's sink, [B, H, Tq, 1]: exp(sink_h - m) / denominator (1 in a
    row with no attendable key, 0 without sinks). The row's key weights sum to 1 minus this."""
    _, sink_e, total = _softmax_terms(attn_scores, config, key_padding_mask)
    if sink_e is None:
        return np.zeros(total.shape, dtype=attn_scores.dtype)
    return (sink_e / np.where(total > 0, total, 1)).astype(attn_scores.dtype, copy=False)


def _softmax_terms(attn_scores: np.ndarray, config: AttentionConfig, key_padding_mask: np.ndarray | None):
    """Step 8 up to the division: (exp(s - m) [B, H, Tq, Tk], the sink's exp(sink - m) [.., 1] or
    None, the denominator [B, H, Tq, 1]), in the scores' dtype."""
    B, H, Tq, Tk = attn_scores.shape
    if key_padding_mask is not None:
        validate_key_padding_mask(key_padding_mask, B, Tk)
    attn_scores = attn_scores / attn_scores.dtype.type(np.sqrt(config.head_dim))  # 1. scale
    attn_scores = softcap(attn_scores, config.softcap)  # 2. softcap (no-op when None)
    attn_scores = add_bias(attn_scores, config.bias)  # 3. bias (no-op when None)
    masked = ~visible(Tq, Tk, config.causal, key_padding_mask, config.window)  # 4. (B or 1, 1, Tq, Tk)
    # a typed -inf: a Python float would promote ml_dtypes' bfloat16 to float64
    attn_scores = np.where(masked, attn_scores.dtype.type(-np.inf), attn_scores)
    sink = sink_logits(config.sinks, attn_scores.dtype)  # (1, H, 1, 1) or None
    row_max = max_over_keys(attn_scores)  # (B, H, Tq, 1)
    if sink is not None:
        row_max = np.maximum(row_max, sink)  # (B, H, Tq, 1): the sink is one more logit of the row
    row_max = np.where(np.isfinite(row_max), row_max, 0)  # fully masked rows: avoid -inf - -inf
    with np.errstate(over="ignore"):  # s - max may round to -inf in float16; exp gives 0, as it should
        e = np.exp(attn_scores - row_max)  # masked entries are exp(-inf) = 0 exactly
        total = e.sum(axis=-1, keepdims=True)  # (B, H, Tq, 1)
        sink_e = None
        if sink is not None:  # 5. the sink's term, in the denominator only
            sink_e = np.exp(sink - row_max)  # (B, H, Tq, 1)
            total = total + sink_e
    return e, sink_e, total


def context(attn_weights: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Step 9. context = attn_weights @ V: [B, H, Tq, Tk], [B, Hkv, Tk, hd] -> [B, H, Tq, hd].

    Grouped K/V heads: query head h's weights average V head h // (H // Hkv), as in step 7.

    A key whose weight is exactly 0 (masked, or dropped) contributes exactly 0, even when its
    value is NaN or +-inf: the sum is over the selected terms, never 0 x NaN = NaN. Finite values
    take the plain matmul; only when V holds a non-finite value does `non_finite_terms` add
    what those entries give where their weight is not 0.
    """
    V = repeat_kv(V, attn_weights.shape[1])  # (B, H, Tk, hd)
    if np.isfinite(V).all():
        return matmul(attn_weights, V)  # (B, H, Tq, head_dim)
    finite = np.where(np.isfinite(V), V, V.dtype.type(0))  # a select: masked NaN never meets its 0 weight
    return matmul(attn_weights, finite) + non_finite_terms(attn_weights, V)


def non_finite_terms(w: np.ndarray, V: np.ndarray) -> np.ndarray:
    """[B, H, Tq, hd]: the sum over keys j with w[..., j] != 0 of w[..., j] * V[..., j, :] restricted to
    V's non-finite entries (0 where there is none): +-inf when they agree in sign, else NaN."""
    pos, neg = (w > 0).astype(np.float64), (w < 0).astype(np.float64)  # (B, H, Tq, Tk); 0 selects nothing
    up, down, nan = (V == np.inf), (V == -np.inf), np.isnan(V)  # (B, H, Tk, hd)
    plus = pos @ up + neg @ down  # (B, H, Tq, hd): terms that are +inf
    minus = pos @ down + neg @ up  # terms that are -inf
    bad = (pos + neg) @ nan  # NaN terms (a NaN weight is NaN in the finite matmul already)
    out = np.where(plus > 0, np.inf, np.where(minus > 0, -np.inf, 0.0))
    out = np.where((bad > 0) | ((plus > 0) & (minus > 0)), np.nan, out)
    return out.astype(V.dtype)


def permute_back(context: np.ndarray) -> np.ndarray:
    """Step 10. Tokens back in front: [B, H, T, head_dim] -> [B, T, H, head_dim]."""
    return context.transpose(0, 2, 1, 3)  # (B, T, H, head_dim)


def concat_heads(context: np.ndarray) -> np.ndarray:
    """Step 11. Concatenate heads: [B, T, H, head_dim] -> [B, T, d_out]."""
    B, T, H, hd = context.shape
    return np.ascontiguousarray(context).reshape(B, T, H * hd)  # (B, T, d_out)


def out_proj(context: np.ndarray, params: Params) -> np.ndarray:
    """Step 12. Output projection: [B, T, d_out] -> [B, T, d_out], y = context @ W_o.T + b_o."""
    return matmul(context, params.W_o.T) + params.b_o  # (B, T, d_out)


def heads(a: np.ndarray, n_heads: int) -> np.ndarray:
    """Steps 5 and 6 at once: [B, T, n_heads * head_dim] -> [B, n_heads, T, head_dim]."""
    return group_by_heads(split_heads(a, n_heads))  # (B, H, T, hd)


def merge_heads(a: np.ndarray) -> np.ndarray:
    """Steps 10 and 11 at once, heads' inverse: [B, n_heads, T, head_dim] -> [B, T, n_heads * head_dim]."""
    return concat_heads(permute_back(a))  # (B, T, H * hd)
