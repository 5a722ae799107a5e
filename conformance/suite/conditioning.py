"""Which softmax rows a correct implementation in dtype D decides: no near tie at the top.

At large logits the softmax is nearly one-hot, and its answer hangs on which score is the
largest. When the runner-up trails the leader by less than the rounding a correct
implementation makes in the scaled scores (about eps(D) times the scores' magnitude, which
at |score| = 1e11 is far more than 1), two correct implementations can pick different
winners, or split the weight between them, and disagree by O(1). No tolerance can tell
them from a bug there, so the large-logit checks compare only the rows that D decides, and
require every row, decided or not, to be finite.

The rounding is bounded by MARGIN units of eps(D) of the score's magnitude bound
sum_d |q_d| |k_d| (after |x| @ |W|.T for the forward), which covers the roundings of the
projections, the dot product and the scale; a row is decided when its leader, pushed down
by that bound, still beats every other attendable key pushed up by its own. A bias (ALiBi) moves
the scores and adds its own magnitude to the bound; a sink is an exact logit with no rounding of
its own, and at the logits these checks draw no leader ties with it, so it is not counted.
"""

from __future__ import annotations

import numpy as np

from conformance.suite.tolerance import eps
from spec import invariants as inv
from spec import steps as S
from spec.config import AttentionConfig
from spec.params import Params
from spec.scores import add_bias

#: eps(D) units a correct implementation may move a scaled score by (a few roundings:
#: projection, dot product, scale; measured: conformance.calibrate finds no failure with 4).
MARGIN = 4.0


def decided_rows(scaled: np.ndarray, bound: np.ndarray, ok: np.ndarray, dtype: str) -> np.ndarray:
    """Bool [B, H, Tq]: rows whose leader stays ahead under every score's rounding bound.

    `scaled` are the float64 scaled scores, `bound` a bound on their magnitude (same shape),
    `ok` the attendable mask [B, 1 or H, Tq, Tk]. Rows with at most one attendable key are
    decided (nothing to tie with).
    """
    delta = MARGIN * eps(dtype) * np.abs(bound)
    ok = np.broadcast_to(ok, scaled.shape)
    lead = np.where(ok, scaled, -np.inf).argmax(-1)[..., None]  # (B, H, Tq, 1)
    low = np.take_along_axis(scaled - delta, lead, -1)  # the leader, pushed down
    high = np.where(ok, scaled + delta, -np.inf)  # every other key, pushed up
    np.put_along_axis(high, lead, -np.inf, -1)
    return (low > high.max(-1, keepdims=True))[..., 0] | (ok.sum(-1) <= 1)


def decided_step8_rows(scores: np.ndarray, config: AttentionConfig, key_padding_mask: np.ndarray | None,
                       dtype: str) -> np.ndarray:
    """decided_rows for step 8, whose input scores are given (rounded to D)."""
    B, _, Tq, Tk = scores.shape
    scaled = S.softcap(scores / np.sqrt(config.head_dim), config.softcap)  # |capped| <= |scaled|: still a bound
    biased = add_bias(scaled, config.bias)  # the bias (exact in float64) moves the scores, and its rounding
    bound = np.abs(scaled) + np.abs(biased - scaled)  # counts by its own size
    return decided_rows(biased, bound, inv.attendable(config, B, Tq, Tk, key_padding_mask), dtype)


def decided_output_rows(x: np.ndarray, params: Params, config: AttentionConfig,
                        key_padding_mask: np.ndarray | None, dtype: str) -> np.ndarray:
    """Bool [B, T]: query positions decided in every head, so the whole output row is."""
    H, Hkv = config.n_heads, config.kv_heads
    Q, K, _ = S.project_qkv(x, params)
    Q, K = S.heads(Q, H), S.heads(K, Hkv)  # (B, H, T, hd), (B, Hkv, T, hd): step 7 repeats K per group
    Qa, Ka, _ = S.project_qkv(np.abs(x), params.map(np.abs))
    Qa, Ka = S.heads(Qa, H), S.heads(Ka, Hkv)
    scale = 1.0 / np.sqrt(config.head_dim)
    scaled = S.softcap(S.attn_scores(Q, K) * scale, config.softcap)  # (B, H, T, T), capped as the spec
    bound = S.attn_scores(Qa, Ka) * scale  # (B, H, T, T), >= |scaled|
    biased = add_bias(scaled, config.bias)  # ALiBi: slope_h * (j - p), rounded by its own size
    bound, scaled = bound + np.abs(biased - scaled), biased
    B, T = x.shape[:2]
    ok = inv.attendable(config, B, T, T, key_padding_mask)
    return decided_rows(scaled, bound, ok, dtype).all(axis=1)  # (B, T)
