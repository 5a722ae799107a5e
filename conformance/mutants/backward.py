"""Backward mutants: `PlainBackend` with one bug in its backward, forward untouched.

Each changes one step VJP or hook of `impls.array_vjps.ArrayVJPs` (PlainBackend's backward), so
every forward check passes and only the gradient checks can kill it. The bugs are the classes
real attention backwards have had: a Jacobian term dropped, a scale or mask forgotten on one
path, dropout redrawn, outputs swapped or transposed, state kept between calls.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conformance.mutants.base import PlainBackend


class BackwardMutant(PlainBackend):
    """A mutant whose forward is right: the gradient checks run first (`kill.run_backend`)."""

    checks_first = "gradients"


class NoRowTerm(BackwardMutant):
    """Softmax backward without its row term: dS = P * dP instead of P * (dP - rowsum(P * dP))."""

    name = "mutant-bwd-no-row-term"

    def row_term(self, P, dP):
        return np.zeros_like(P[..., :1])  # (B, H, Tq, 1)


class NoScaleInDK(BackwardMutant):
    """The 1/sqrt(head_dim) scale missing in dK: dk from the unscaled score gradient, dq right."""

    name = "mutant-bwd-no-scale-dk"

    def attn_scores_vjp(self, d_scores, q, k):
        dq, dk = super().attn_scores_vjp(d_scores, q, k)
        return dq, dk * np.sqrt(q.shape[-1])  # undo the scale on the key path only


class NoCausalMaskInBackward(BackwardMutant):
    """No causal mask in backward: the weights recomputed for the softmax Jacobian see future keys."""

    name = "mutant-bwd-no-causal-mask"

    def attn_weights_vjp(self, d_weights, attn_scores, config, key_padding_mask=None, dropout_mask=None):
        return super().attn_weights_vjp(d_weights, attn_scores, replace(config, causal=False), key_padding_mask,
                                        dropout_mask)


class DropoutRedrawn(BackwardMutant):
    """Dropout mask redrawn in backward: a fresh keep mask with the same p instead of the forward's."""

    name = "mutant-bwd-dropout-redrawn"

    def backward_dropout_mask(self, keep, config):
        if keep is None:
            return None
        return np.random.default_rng().random(keep.shape) >= config.dropout_p


class DKDVSwapped(BackwardMutant):
    """dK and dV swapped on their way into the projection's backward (dW_k gets dV, dW_v gets dK)."""

    name = "mutant-bwd-dk-dv-swapped"

    def qkv_cotangents(self, dQ, dK, dV):
        return dQ, dV, dK


class WeightGradTransposed(BackwardMutant):
    """dW_q transposed: x^T @ dQ, [d_in, d_out], instead of dQ^T @ x (visible when d_in != d_out)."""

    name = "mutant-bwd-dwq-transposed"

    def project_qkv_vjp(self, dQ, dK, dV, x, weights):
        dx, d = super().project_qkv_vjp(dQ, dK, dV, x, weights)
        d["W_q"] = d["W_q"].T  # the bug: (d_in, d_out)
        return dx, d


class BiasGradWrongAxis(BackwardMutant):
    """db_o summed over the token axis only: the batch axis is left unreduced and element 0 kept."""

    name = "mutant-bwd-bias-wrong-axis"

    def out_proj_vjp(self, d_out, context_concat, weights):
        d_context, d = super().out_proj_vjp(d_out, context_concat, weights)
        d["b_o"] = d_out.sum(axis=1)[0]  # (d_out,): batch element 0's sum, not the whole batch's
        return d_context, d


class GradsAccumulated(BackwardMutant):
    """Gradients accumulated across calls: each backward adds to the previous call's (no zero_grad)."""

    name = "mutant-bwd-accumulated"

    def finish_grads(self, grads):
        acc = self.__dict__.setdefault("_acc", {})
        out = {}
        for n, a in grads.items():
            key = (n, a.shape, a.dtype.str)
            acc[key] = acc[key] + a if key in acc else a.copy()
            out[n] = acc[key].copy()
        return out


class DxQueryPathOnly(BackwardMutant):
    """dx from the query path only: dQ @ W_q, the key and value paths' dK @ W_k + dV @ W_v dropped."""

    name = "mutant-bwd-dx-query-only"

    def project_qkv_vjp(self, dQ, dK, dV, x, weights):
        _, d = super().project_qkv_vjp(dQ, dK, dV, x, weights)
        return dQ @ weights.W_q, d


class BackwardHeadDimTail(BackwardMutant):
    """dv accumulated in 64-wide head_dim vectors; past head_dim 64 the tail vector is never written (zero).

    The backward twin of mutant-head-dim-tail: right for head_dim <= 64 and multiples of 64,
    wrong at 72, 111, 160, ... Only the gradient checks' examples past head_dim 64 see it.
    """

    name = "mutant-bwd-head-dim-tail"
    width = 64

    def context_vjp(self, d_context, attn_weights, v):
        d_weights, dv = super().context_vjp(d_context, attn_weights, v)
        hd = v.shape[-1]
        if hd > self.width:
            dv[..., hd // self.width * self.width:] = 0  # (B, H, Tk, hd): whole vectors only
        return d_weights, dv


class BackwardQueryTileDropped(BackwardMutant):
    """Backward in 256-row query tiles; past T = 256 the last partial tile is never computed (its rows add nothing).

    The backward twin of mutant-query-tile-dropped: a launch of T // 256 query tiles instead
    of ceil(T / 256), right for T <= 256 and multiples of 256, wrong at T = 257, 300, 411, ...:
    those queries' dq is zero and their share of dk and dv is missing.
    """

    name = "mutant-bwd-query-tile-dropped"
    tile = 256

    def context_vjp(self, d_context, attn_weights, v):
        Tq = d_context.shape[-2]
        if Tq > self.tile:
            d_context = d_context.copy()
            d_context[..., Tq // self.tile * self.tile:, :] = 0  # (B, H, Tq, hd): the partial tile's rows
        return super().context_vjp(d_context, attn_weights, v)


#: The backward mutants, in table order.
BACKWARD_MUTANTS: list[type[PlainBackend]] = [NoRowTerm, NoScaleInDK, NoCausalMaskInBackward, DropoutRedrawn,
                                              DKDVSwapped, WeightGradTransposed, BiasGradWrongAxis,
                                              GradsAccumulated, DxQueryPathOnly]
#: Backward mutants whose bugs show only past the old sizes (head_dim 8, T 129): only the gradient
#: checks' fixed examples at the size classes' edges (`grad_representatives`) are sure to reach them.
BACKWARD_SIZE_MUTANTS: list[type[PlainBackend]] = [BackwardHeadDimTail, BackwardQueryTileDropped]
