"""The mutants: `PlainBackend` with one planted bug each, from the bug classes real attention code has.

Each class changes one small piece of `PlainBackend` and names its bug in the first line of
its docstring (the runner prints that line); where the bug is known from real code, the
docstring says where. `float16_na` says why the bug cannot exist in float16, else None.
`MUTANTS` keeps them in a fixed order: the order of the printed table.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conformance.mutants.base import PlainBackend, work_dtype
from conformance.mutants.cache import CACHE_MUTANTS
from conformance.mutants.backward import BACKWARD_MUTANTS, BACKWARD_SIZE_MUTANTS
from conformance.mutants.bitwise import BITWISE_MUTANTS
from conformance.mutants.nonfinite import NON_FINITE_MUTANTS
from conformance.mutants.grouped import GROUPED_CACHE_MUTANTS, GROUPED_MUTANTS
from conformance.mutants.layouts import LAYOUT_MUTANTS
from conformance.mutants.inputs import INPUT_MUTANTS
from conformance.mutants.sized import SIZE_MUTANTS
from conformance.mutants.windows import WINDOW_DECODE_MUTANTS, WINDOW_MUTANTS
from conformance.mutants.bias import BIAS_GRAD_MUTANTS, BIAS_MUTANTS
from spec.config import AttentionConfig
from spec.params import Params


# -- step 8: scale ------------------------------------------------------------------------------
class ScaleByDOut(PlainBackend):
    """Scores scaled by 1/sqrt(d_out) instead of 1/sqrt(head_dim).

    The model dimension is used where the per-head dimension belongs (same only with one head).
    """

    name = "mutant-scale-d-out"

    def scale(self, config: AttentionConfig) -> float:
        return 1.0 / np.sqrt(config.d_out)


class NoScale(PlainBackend):
    """Scores not scaled at all (the 1/sqrt(head_dim) factor forgotten)."""

    name = "mutant-no-scale"

    def scale(self, config: AttentionConfig) -> float:
        return 1.0


# -- step 8: masks ------------------------------------------------------------------------------
class SelfMasked(PlainBackend):
    """Causal mask off by one: triu(diagonal=0) masks each query's own key too."""

    name = "mutant-self-masked"

    def causal_mask(self, Tq: int, Tk: int) -> np.ndarray:
        return np.triu(np.ones((Tq, Tk), dtype=bool), k=Tk - Tq)  # (Tq, Tk)


class FutureLeak(PlainBackend):
    """Causal mask off by one: triu(diagonal=2) lets each query see the next token."""

    name = "mutant-future-leak"

    def causal_mask(self, Tq: int, Tk: int) -> np.ndarray:
        return np.triu(np.ones((Tq, Tk), dtype=bool), k=2 + Tk - Tq)  # (Tq, Tk)


class PaddingInverted(PlainBackend):
    """Key padding mask read with the opposite polarity (True = masked).

    nn.MultiheadAttention's key_padding_mask uses True = ignore; SDPA and this spec use True =
    may attend, so an adapter that passes a mask straight through inverts it.
    """

    name = "mutant-padding-inverted"

    def padding(self, key_padding_mask: np.ndarray) -> np.ndarray:
        return key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)


class FiniteSentinel(PlainBackend):
    """Masked scores set to a finite -1e9 instead of -inf.

    Common in tutorials and older codebases (`masked_fill(mask, -1e9)`): a row whose real
    scores are all below -1e9 then attends to the masked keys, and a fully masked row gets
    uniform weights over masked keys instead of zeros. (In float16 tensors -1e9 would round
    to -inf; this backend computes float16 in float32, where the sentinel stays finite.)
    """

    name = "mutant-finite-sentinel"

    def softmax(self, s: np.ndarray, masked: np.ndarray) -> np.ndarray:
        s = np.where(masked, s.dtype.type(-1e9), s)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


class MaskAfterSoftmax(PlainBackend):
    """Mask applied after the softmax (weights zeroed) without renormalising the rows."""

    name = "mutant-mask-after-softmax"

    def softmax(self, s: np.ndarray, masked: np.ndarray) -> np.ndarray:
        w = super().softmax(s, np.zeros_like(masked))
        return np.where(masked, 0, w)


class CachedMask(PlainBackend):
    """Result depends on earlier calls: the combined mask is cached under a key that is too coarse.

    The cache is keyed by (B, Tq, Tk) only, so a later call with the same shapes reuses a mask
    built for another causal flag or another padding mask (models that cache their causal mask
    buffer per sequence length and fold the padding into it have had this bug).
    """

    name = "mutant-cached-mask"

    def mask(self, config, B, Tq, Tk, key_padding_mask):
        cache = self.__dict__.setdefault("_cache", {})
        if (B, Tq, Tk) not in cache:
            cache[(B, Tq, Tk)] = super().mask(config, B, Tq, Tk, key_padding_mask)
        return cache[(B, Tq, Tk)]


class PaddingAddsSentinel(PlainBackend):
    """Padded keys masked by adding a finite -1e9 to their scores instead of -inf: a score past 1e9 wins.

    The additive "extended attention mask" of older Transformer code ((1 - mask) * -1e9 added
    to the scores); rows with no visible key are zeroed, as SDPA-style kernels do. Only a
    padded key whose own score passes 1e9 shows it: a poisoned padded token, or step 8 fed
    such scores directly.
    """

    name = "mutant-padding-adds-sentinel"
    float16_na = ("float16 scores stay below 65504, so -1e9 added to one always masks it: the leak needs a "
                  "finite score past 1e9, which float16 cannot hold")

    def attn_weights(self, attn_scores, config, key_padding_mask=None, dropout_mask=None):
        if key_padding_mask is None:
            return super().attn_weights(attn_scores, config, None, dropout_mask)
        B, _, Tq, Tk = attn_scores.shape
        s = attn_scores.astype(work_dtype(attn_scores.dtype))
        s = s + np.where(key_padding_mask, 0, s.dtype.type(-1e9))[:, None, None, :]  # (B, 1, 1, Tk) bias
        w = super().attn_weights(s, config, None, dropout_mask)  # the causal mask still -inf
        dead = self.mask(config, B, Tq, Tk, key_padding_mask).all(-1, keepdims=True)  # (B, 1, Tq, 1)
        return np.where(dead, 0, w).astype(attn_scores.dtype)


class PaddingZeroedAfterExp(PlainBackend):
    """Padded keys zeroed by multiplying their exponentials by 0: exp overflows and 0 x inf = NaN enters the sum.

    Keras-style masked softmax: e = exp(s - m) * mask, m the row's max over the visible keys.
    A padded key scoring 89 past that max (float32) overflows exp; on moderate scores it is
    exactly right: poisoned padded tokens, large scores and padding together show it.
    """

    name = "mutant-padding-zeroed-after-exp"

    def attn_weights(self, attn_scores, config, key_padding_mask=None, dropout_mask=None):
        if key_padding_mask is None:
            return super().attn_weights(attn_scores, config, None, dropout_mask)
        B, _, Tq, Tk = attn_scores.shape
        s = attn_scores.astype(work_dtype(attn_scores.dtype))
        s = s * s.dtype.type(self.scale(config))
        s = np.where(self.mask(config, B, Tq, Tk, None), -np.inf, s)  # causal: -inf, as it should be
        masked = self.mask(config, B, Tq, Tk, key_padding_mask)  # (B, 1, Tq, Tk)
        m = np.where(masked, -np.inf, s).max(axis=-1, keepdims=True)  # (B, H, Tq, 1): the visible keys' max
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(s - np.where(np.isfinite(m), m, 0)) * key_padding_mask[:, None, None, :]  # 0 x exp(...)
            total = e.sum(axis=-1, keepdims=True)
            w = e / np.where(total > 0, total, 1)  # a NaN total stays NaN
        w = np.where(masked.all(-1, keepdims=True), 0, w)  # rows with no visible key: zero, as they should be
        if dropout_mask is not None:
            w = self.dropout(w, dropout_mask, config.dropout_p)
        return w.astype(attn_scores.dtype)


# -- step 8: softmax ------------------------------------------------------------------------------
class SoftmaxWrongAxis(PlainBackend):
    """Softmax taken over the query axis (dim=-2) instead of the key axis."""

    name = "mutant-softmax-wrong-axis"

    def softmax(self, s: np.ndarray, masked: np.ndarray) -> np.ndarray:
        s = np.where(masked, -np.inf, s)
        m = s.max(axis=-2, keepdims=True)  # (B, H, 1, Tk)
        e = np.exp(s - np.where(np.isfinite(m), m, 0))
        total = e.sum(axis=-2, keepdims=True)
        return e / np.where(total > 0, total, 1)


class NoMaxSubtraction(PlainBackend):
    """Softmax without subtracting the row maximum: exp overflows to inf, inf/inf is NaN."""

    name = "mutant-no-max-subtraction"

    def softmax(self, s: np.ndarray, masked: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(np.where(masked, -np.inf, s))
            total = e.sum(axis=-1, keepdims=True)
            return e / np.where(total > 0, total, 1)


# -- step 8: dropout ----------------------------------------------------------------------------
class DropoutScaledByP(PlainBackend):
    """Dropout divides the kept weights by p instead of 1 - p (drop and keep probability mixed up)."""

    name = "mutant-dropout-scaled-by-p"

    def dropout(self, w: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
        return np.where(keep, w / p, 0).astype(w.dtype)


class DropoutInEval(PlainBackend):
    """Dropout stays active in eval mode (training flag ignored, as with a forgotten model.eval())."""

    name = "mutant-dropout-in-eval"

    def forward_dropout_mask(self, shape, config, dropout_mask, training):
        return super().forward_dropout_mask(shape, config, dropout_mask, True)


# -- steps 4 and 12: projections --------------------------------------------------------------------
class KVSwapped(PlainBackend):
    """K and V swapped in the forward: scores from Q @ V^T, context from weights @ K."""

    name = "mutant-kv-swapped"

    def qkv(self, x, weights):
        Q, K, V = super().qkv(x, weights)
        return Q, V, K


class WqWkSwapped(PlainBackend):
    """W_q and W_k swapped in the projection: the score matrix comes out transposed."""

    name = "mutant-wq-wk-swapped"

    def project_qkv(self, x, weights):
        Q, K, V = super().project_qkv(x, weights)
        return K, Q, V


class Untransposed(PlainBackend):
    """Weights used untransposed: y = x @ W instead of x @ W.T.

    Right only for symmetric W; with d_in != d_out the matmul raises, as real code would.
    """

    name = "mutant-untransposed"

    def linear(self, x, W, b):
        y = x @ W  # (..., in) @ (out, in): only defined when in == out
        return y if b is None else y + b


class NoOutputBias(PlainBackend):
    """Output projection without its bias b_o."""

    name = "mutant-no-output-bias"

    def out_proj(self, context, weights: Params):
        return super().out_proj(context, replace(weights, b_o=np.zeros_like(weights.b_o)))


# -- steps 5, 6, 10: layout -----------------------------------------------------------------------
class SplitWrongOrder(PlainBackend):
    """Heads split with the wrong reshape order: view(B, T, head_dim, H).transpose(2, 3).

    Head h then gets the strided features h, h + H, h + 2H, ... instead of a contiguous slice.
    """

    name = "mutant-split-wrong-order"

    def split_heads(self, Q, n_heads):
        B, T, d_out = Q.shape
        return Q.reshape(B, T, d_out // n_heads, n_heads).swapaxes(2, 3)  # (B, T, H, hd), strided


class NoPermuteBack(PlainBackend):
    """Heads merged with a reshape but no permute back: [B, H, T, hd] read as [B, T, H, hd]."""

    name = "mutant-no-permute-back"

    def permute_back(self, context):
        B, H, T, hd = context.shape
        return context.reshape(B, T, H, hd)  # tokens and heads scrambled


class BatchMixed(PlainBackend):
    """Batch rows mixed: heads grouped through a reshape over B*T that crosses batch elements.

    reshape(B*T, H, hd).transpose(1, 0, 2).reshape(B, H, T, hd) is right only when B == 1.
    """

    name = "mutant-batch-mixed"

    def group_by_heads(self, Q):
        B, T, H, hd = Q.shape
        return Q.reshape(B * T, H, hd).transpose(1, 0, 2).reshape(B, H, T, hd)  # (B, H, T, hd), mixed


# -- step 9: blocking ----------------------------------------------------------------------------
class DropsTailBlock(PlainBackend):
    """Context accumulated over 64-key blocks, counting max(1, Tk // 64) blocks (floor, not ceil).

    Right for T <= 64 and for multiples of 64; for T = 65, 127, 129 the keys past the last
    full block never reach the context.
    """

    name = "mutant-drops-tail-block"
    block = 64

    def context(self, attn_weights, V):
        work = work_dtype(V.dtype)
        w, V_ = attn_weights.astype(work), V.astype(work)
        Tk = V.shape[-2]
        out = np.zeros(w.shape[:-1] + V.shape[-1:], dtype=work)  # (B, H, Tq, hd)
        for j0 in range(0, max(1, Tk // self.block) * self.block, self.block):
            j1 = min(j0 + self.block, Tk)
            out += w[..., j0:j1] @ V_[..., j0:j1, :]
        return out.astype(V.dtype)


# -- precision -----------------------------------------------------------------------------------
class Float16Scores(PlainBackend):
    """Low-precision accumulation: scores rounded to and summed in float16 whatever the input dtype."""

    name = "mutant-float16-scores"
    float16_na = "low-precision accumulation: float16 already is the low precision"

    def attn_scores(self, Q, K):
        Q16, K16 = Q.astype(np.float16), K.astype(np.float16)
        acc = np.zeros(Q.shape[:-1] + K.shape[-2:-1], dtype=np.float16)  # (B, H, Tq, Tk)
        with np.errstate(over="ignore", invalid="ignore"):
            for d in range(Q.shape[-1]):  # float16 running sum over head_dim
                acc += Q16[..., :, None, d] * K16[..., None, :, d]
        return acc.astype(Q.dtype)


# -- inputs and state -------------------------------------------------------------------------------
class MutatesInput(PlainBackend):
    """Input x modified in place: scaled down by 3 "for overflow safety" and back up, inexactly.

    x /= 3 then x *= 3 does not round-trip in floating point, so the caller's x changes in
    its last bits while the output stays right (as in-place `x.div_()` / `x.mul_()` pairs do).
    """

    name = "mutant-mutates-input"
    checks_first = ("inputs_not_mutated",)  # the checks before it pass: the kill run starts here

    def qkv(self, x, weights):
        x /= 3  # in place: the caller's array
        xw = x.astype(work_dtype(x.dtype)) * 3
        x *= 3  # "restored", up to rounding
        return self.project_qkv(xw, weights.map(lambda a: a.astype(xw.dtype)))


#: Every mutant, in table order.
MUTANTS: list[type[PlainBackend]] = [
    ScaleByDOut, NoScale, SelfMasked, FutureLeak, PaddingInverted, FiniteSentinel, MaskAfterSoftmax,
    SoftmaxWrongAxis, NoMaxSubtraction, DropoutScaledByP, DropoutInEval, KVSwapped, WqWkSwapped,
    Untransposed, NoOutputBias, SplitWrongOrder, NoPermuteBack, BatchMixed, DropsTailBlock,
    Float16Scores, MutatesInput, CachedMask, PaddingAddsSentinel, PaddingZeroedAfterExp, *SIZE_MUTANTS,
    *CACHE_MUTANTS, *BACKWARD_MUTANTS, *BACKWARD_SIZE_MUTANTS, *GROUPED_MUTANTS, *GROUPED_CACHE_MUTANTS,
    *BITWISE_MUTANTS, *LAYOUT_MUTANTS, *NON_FINITE_MUTANTS, *INPUT_MUTANTS, *WINDOW_MUTANTS,
    *WINDOW_DECODE_MUTANTS, *BIAS_MUTANTS, *BIAS_GRAD_MUTANTS,
]


def by_name() -> dict[str, type[PlainBackend]]:
    return {m.name: m for m in MUTANTS}
