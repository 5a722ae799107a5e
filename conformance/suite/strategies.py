"""Hypothesis strategies: shapes first, then values drawn from a seed.

Shapes and options are drawn as small integers and flags, so shrinking goes towards small,
readable examples (B=1, T=1, one head); values come from a NumPy generator seeded by a drawn
integer, because drawing thousands of floats one by one is slow and shrinks to unreadable
arrays. Token counts include 1, primes, and sizes just past common block sizes (65, 129).
With `large=True` the shapes come from the size regime (`conformance.suite.sizes`): the profile's
share of examples at the sizes real kernels run at, each within a cost budget.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from conformance.suite import activations as act
from conformance.suite import profiles
from conformance.suite import sizes as sz
from conformance.suite.case import Case, round_to
from conformance.suite.reused import reused
from impls.base import Capabilities
from spec.config import AttentionConfig
from spec.params import init_params
from spec.scores import BiasArray

#: Token counts past the small range: primes and block-size edges (64/128 +- 1).
EDGE_TOKENS = (17, 31, 33, 63, 64, 65, 127, 128, 129)
#: Multipliers on the nn.Linear init of the weights; 2 makes softmax far from uniform.
PARAM_SCALES = (2.0, 0.5, 6.0)
X_SCALES = (1.0, 0.01, 10.0)
#: float16 and bfloat16 stop at logits of a few tens: beyond that one rounding of a score
#: (|s| * 2^-8 in bfloat16) already reorders the softmax, and any two correct orders of
#: rounding disagree by O(1). Large logits have their own checks (finite_for_large_logits).
LOW_PRECISION_SCALES = {"x": (1.0, 0.01, 3.0), "param": (2.0, 0.5, 3.0)}


#: st.sampled_from, one strategy per sequence of values: a draw that builds its own has it
#: validated anew each example (conformance/suite/reused.py).
sampled_from = reused(st.sampled_from)
#: st.integers, one strategy per bounds: Hypothesis's own cache of it cost 36 us a call, about
#: 30 calls an example.
integers = functools.lru_cache(maxsize=1024)(st.integers)


def value_scales(dtype: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(x scales, weight scales) drawn for dtype; the first of each is where shrinking ends."""
    if dtype in ("float16", "bfloat16"):
        return LOW_PRECISION_SCALES["x"], LOW_PRECISION_SCALES["param"]
    return X_SCALES, PARAM_SCALES
PADDING_KINDS = ("none", "random", "left", "one-row-empty")


@reused
def tokens(max_tokens: int | None = None, min_tokens: int = 1) -> st.SearchStrategy[int]:
    """T: mostly small, sometimes a prime or a block-size edge; within [min_tokens, max_tokens]."""
    s = st.one_of(integers(1, 12), st.sampled_from(EDGE_TOKENS))
    if max_tokens is not None:
        s = s.filter(lambda t: t <= max_tokens)
    return s if min_tokens <= 1 else s.filter(lambda t: t >= min_tokens)


@reused
@st.composite
def configs(draw, caps: Capabilities, causal: bool | None = None, dropout_p: float = 0.0,
            max_d: int = 24, shape: sz.Sizes | None = None) -> AttentionConfig:
    """An AttentionConfig inside the backend's declared capabilities; n_heads divides d_out.

    `shape` (from the size regime) fixes H, head_dim and d_in instead of drawing them small.
    """
    if shape is not None:
        H = shape.H
    elif caps.grouped_kv:  # H = K/V heads x group size, so most draws are grouped (shrinks to H = 1)
        H = draw(integers(1, 2)) * draw(integers(1, 4))
    else:
        H = draw(integers(1, 4))
    head_dim = draw(integers(1, 8)) if shape is None else shape.head_dim
    d_out = H * head_dim
    if caps.d_in_equals_d_out:
        d_in = d_out
    else:
        d_in = draw(integers(1, max_d)) if shape is None else shape.d_in
    if causal is None:
        modes = tuple(m for m, ok in ((True, caps.causal), (False, caps.non_causal)) if ok)
        causal = draw(sampled_from(modes))
    qkv_bias = draw(st.booleans()) if caps.qkv_bias else False
    n_kv = draw(kv_heads(H)) if caps.grouped_kv else H
    return AttentionConfig(d_in=d_in, d_out=d_out, n_heads=H, causal=causal, qkv_bias=qkv_bias,
                           dropout_p=dropout_p, n_kv_heads=n_kv, window=draw(windows(caps, causal)),
                           softcap=draw(softcaps(caps, shape)), bias=draw(biases(caps, shape)),
                           sinks=draw(sinks(caps, H, shape)))


#: ALIGNED: a window, a softcap, a bias or sinks is drawn whether or not the backend declares it,
#: and dropped when it does not: Hypothesis's choices then run the same course for two backends
#: that differ only in one of these (numpy and torch-sdpa, which has no softcap), so they draw
#: the same examples wherever the first's has none of it, and share the references computed for
#: them (`conformance.suite.memo`). A choice sequence that diverged once would differ for the
#: rest of the run.
#: Window sides drawn: 0 (none on that side), the narrow ones where an off-by-one shows, a few wider.
WINDOW_SIDES = (0, 1, 2, 3, 5, 8, 17)
#: Softcaps drawn: Gemma 2's 50 and 30 (tanh far from saturated at moderate scores), and small
#: ones (1, 5) that saturate tanh at the scores the value scales give, as FlashAttention's tests
#: do by scaling q.
SOFTCAPS = (50.0, 30.0, 5.0, 1.0)


@reused
@st.composite
def windows(draw, caps: Capabilities, causal: bool) -> tuple[int, int] | None:
    """A sliding window (left, right) for a backend declaring windows, a third of the time
    (the default run is near its 3-minute budget); None (shrinks there) otherwise. Causal: right = 0 mostly, as causal kernels take it (a wider right
    side is cut by the causal mask anyway, and checks that the backend intersects the two)."""
    if draw(integers(0, 2)) != 0:
        return None
    left = draw(sampled_from(WINDOW_SIDES))
    right = draw(sampled_from((0, 0, 0, 1))) if causal else draw(sampled_from(WINDOW_SIDES))
    return (left, right) if caps.window else None  # drawn either way: see ALIGNED


#: Softcap only on shapes of at most this many scores (B x H x T x T): the float64 golden's tanh
#: runs in long double without SIMD, which the size regime's cost model does not count; on the
#: large draws it tripled the golden's time (numpy causality, float64, seed 1: 2.5 s -> 10 s of
#: CPU, 1.9 s of it in tanh). A softcap is elementwise, so tile and size edges matter little to it.
SOFTCAP_MAX_SCORES = 1 << 16


@reused
@st.composite
def softcaps(draw, caps: Capabilities, shape: sz.Sizes | None = None) -> float | None:
    """A logit softcap for a backend declaring it, a third of the time, on shapes up to
    SOFTCAP_MAX_SCORES scores; None (shrinks there) otherwise."""
    if shape is not None and shape.B * shape.H * shape.T * shape.T > SOFTCAP_MAX_SCORES:
        return None
    if draw(integers(0, 2)) != 0:
        return None
    cap = draw(sampled_from(SOFTCAPS))
    return cap if caps.softcap else None  # drawn either way: see ALIGNED


#: Bias and sinks only on shapes of at most this many scores (B x H x T x T): either sends NumPy's
#: forward and backward to the paths composed of the steps (whole score matrices), which on the
#: size regime's largest draws would cost more than the whole default run may grow by.
SCORE_TERMS_MAX_SCORES = 1 << 16
#: One drawn config in SCORE_TERMS_ODDS gets a bias, and independently one in SCORE_TERMS_ODDS sinks.
SCORE_TERMS_ODDS = 4


def _small(shape: sz.Sizes | None) -> bool:
    return shape is None or shape.B * shape.H * shape.T * shape.T <= SCORE_TERMS_MAX_SCORES


@reused
@st.composite
def biases(draw, caps: Capabilities, shape: sz.Sizes | None = None) -> str | None:
    """ALiBi for a backend declaring a bias, one draw in SCORE_TERMS_ODDS on shapes up to
    SCORE_TERMS_MAX_SCORES scores; None (shrinks there) otherwise."""
    if not _small(shape) or draw(integers(0, SCORE_TERMS_ODDS - 1)) != 0:
        return None
    return "alibi" if caps.bias else None  # drawn either way: see ALIGNED


#: The broadcast shapes a drawn bias array takes, by name, from (B, H, T): shared by every batch row
#: and head, per head (ALiBi-like), per batch row (a float padding mask), whole, per key, 3-D
#: (no batch axis: numpy's broadcasting aligns on the right), per query row (a row constant).
BIAS_SHAPES = {"shared": lambda B, H, T: (1, 1, T, T), "per head": lambda B, H, T: (1, H, T, T),
               "per batch": lambda B, H, T: (B, 1, T, T), "whole": lambda B, H, T: (B, H, T, T),
               "per key": lambda B, H, T: (1, H, 1, T), "3-D": lambda B, H, T: (H, T, T),
               "per row": lambda B, H, T: (B, H, T, 1)}


@st.composite
def bias_arrays(draw, caps: Capabilities, config: AttentionConfig, B: int, T: int, dtype: str,
                always: bool = False) -> AttentionConfig:
    """config with a drawn bias array (one of BIAS_SHAPES, values N(0, 2^2) rounded to dtype) for a
    backend declaring a bias, one draw in SCORE_TERMS_ODDS (every draw when `always`) on shapes up
    to SCORE_TERMS_MAX_SCORES scores, in place of no bias; config unchanged otherwise. Only the
    checks of one forward or backward call draw it: an array covers one call's T."""
    if not caps.bias or config.bias is not None or B * config.n_heads * T * T > SCORE_TERMS_MAX_SCORES:
        return config
    if not always and draw(integers(0, SCORE_TERMS_ODDS - 1)) != 0:
        return config
    shape = BIAS_SHAPES[draw(sampled_from(sorted(BIAS_SHAPES)))](B, config.n_heads, T)
    rng = np.random.default_rng(draw(integers(0, 2**32 - 1)))
    return replace(config, bias=BiasArray(round_to(rng.standard_normal(shape) * 2.0, dtype)))


#: Sink logits are multiples of 1/4 in [-2, 3]: exact in every dtype (bfloat16 included), so the
#: backend, the golden and the plain reference see the same logits; comparable to the scaled
#: scores the value scales give, so the sink takes anything from a little to most of a row.
SINK_STEPS = (-8, 12)


@reused
@st.composite
def sinks(draw, caps: Capabilities, H: int, shape: sz.Sizes | None = None) -> tuple[float, ...] | None:
    """One sink logit per head for a backend declaring sinks, one draw in SCORE_TERMS_ODDS on shapes
    up to SCORE_TERMS_MAX_SCORES scores; None (shrinks there) otherwise. The H logits come from one
    drawn seed (H may be hundreds)."""
    if not _small(shape) or draw(integers(0, SCORE_TERMS_ODDS - 1)) != 0:
        return None
    rng = np.random.default_rng(draw(integers(0, 2**16)))
    if not caps.sinks:  # drawn either way: see ALIGNED
        return None
    return tuple(float(k) / 4 for k in rng.integers(SINK_STEPS[0], SINK_STEPS[1] + 1, H))


@reused
@st.composite
def kv_heads(draw, H: int) -> int:
    """n_kv_heads for H query heads (grouped-query attention): H, or twice as often a proper
    divisor of H (1 = multi-query first). Shrinks to H, ordinary attention, so a failure that is
    not about grouping shrinks to a readable ungrouped example."""
    proper = [d for d in range(1, H) if H % d == 0]
    if not proper or draw(integers(0, 5)) == 0:
        return H
    return draw(sampled_from(proper))


def padding_mask(kind: str, B: int, T: int, rng: np.random.Generator) -> np.ndarray | None:
    """A key padding mask (True = may attend) of one of PADDING_KINDS.

    "left" pads the first keys, so early causal queries see no key at all (zero rows);
    "one-row-empty" masks every key of the first batch element.
    """
    if kind == "none":
        return None
    mask = rng.random((B, T)) > 0.3
    if kind == "left":
        mask[:, : max(1, T // 3)] = False
    elif kind == "one-row-empty":
        mask[0] = False
    return mask


def _values(config: AttentionConfig, B: int, T: int, dtype: str, seed: int, x_scale: float,
            param_scale: float, values: str = "gaussian", grads: bool = False):
    if values == "activation-like":  # conformance/suite/activations.py; param_scale does not apply
        rng, x, params = act.activation_values(config, B, T, dtype, seed, x_scale, grads=grads)
        return rng, round_to(x, dtype), params.map(lambda a: round_to(a, dtype))
    rng = np.random.default_rng(seed)
    x = round_to(rng.standard_normal((B, T, config.d_in)) * x_scale, dtype)
    params = init_params(config, seed=seed + 1).map(lambda a: round_to(a * param_scale, dtype))
    return rng, x, params


def case_from(config: AttentionConfig, B: int, T: int, dtype: str, seed: int, x_scale: float = 1.0,
              param_scale: float = 1.0) -> Case:
    """The case that `cases` builds from these draws (no padding): for saved, replayable extras."""
    _, x, params = _values(config, B, T, dtype, seed, x_scale, param_scale)
    return Case(config=config, dtype=dtype, x=x, params=params, seed=seed, x_scale=x_scale)


def class_representatives(caps: Capabilities, dtype: str, *, budget_scale: float = 1.0,
                          first_edges: bool = False, long_past: int = 512) -> list[Case]:
    """One fixed case per edge of each size class (`conformance.suite.sizes.representatives`) within
    the backend's capabilities: causal where supported, no bias, unit x and the first weight
    scale (2: softmax far from uniform, so a dropped key shows). Run first, as explicit examples.
    `budget_scale`, `first_edges`, `long_past`: as `cases` and `sizes.representatives` (gradients);
    without `first_edges`, the index-width edges (`sizes.index_representatives`) that fit too."""
    _, budget = profiles.large_regime()
    reps = sz.representatives(dtype, budget * budget_scale, caps.d_in_equals_d_out, max_tokens=caps.max_tokens,
                              first_edges=first_edges, long_past=long_past)
    if not first_edges:  # the forward's index-width edges (H = 300, B x H past 65,535) where they fit
        reps += sz.index_representatives(dtype, budget * budget_scale, caps.d_in_equals_d_out)
    param_scale = value_scales(dtype)[1][0]
    out = []
    for _, s in reps:
        config = AttentionConfig(d_in=s.d_in, d_out=s.d_out, n_heads=s.H, causal=caps.causal)
        case = case_from(config, s.B, s.T, dtype, seed=s.T * 31 + s.d_out, param_scale=param_scale)
        out.append(case.with_(extra={"param_scale": param_scale}))
    return out + grouped_representatives(caps, dtype)


#: The fixed grouped-query examples: multi-query (one K/V head), and groups of 2 where the
#: consecutive mapping (h // 2) and the interleaved one (h % 2) give different heads.
GROUPED_EXAMPLES = ({"H": 4, "n_kv_heads": 1}, {"H": 4, "n_kv_heads": 2})


def grouped_representatives(caps: Capabilities, dtype: str, B: int = 1, T: int = 17) -> list[Case]:
    """The GROUPED_EXAMPLES as cases for a backend declaring grouped_kv (none otherwise): causal
    where supported, biases where supported (b_k, b_v of n_kv_heads heads), head_dim 8, weights
    at the first scale; run first, as explicit examples."""
    if not caps.grouped_kv:
        return []
    param_scale = value_scales(dtype)[1][0]
    d_in = 32 if caps.d_in_equals_d_out else 16
    out = []
    for g in GROUPED_EXAMPLES:
        config = AttentionConfig(d_in=d_in, d_out=g["H"] * 8, n_heads=g["H"], n_kv_heads=g["n_kv_heads"],
                                 causal=caps.causal, qkv_bias=caps.qkv_bias)
        case = case_from(config, B, T, dtype, seed=T * 37 + g["n_kv_heads"], param_scale=param_scale)
        out.append(case.with_(extra={"param_scale": param_scale}))
    return out


@reused
@st.composite
def cases(draw, caps: Capabilities, dtype: str, *, causal: bool | None = None,
          padding: bool = True, min_tokens: int = 1, max_batch: int = 3, min_batch: int = 1,
          large: bool = False, budget_scale: float = 1.0, values: str | None = None,
          grads: bool = False, bias_array: bool = False) -> Case:
    """A Case with moderate values: the everyday input of the equality properties.

    `large`: shapes from the size regime, the profile's share of them at large sizes, each within
    the profile's forward budget times `budget_scale` (a check doing more per example scales it down).
    `values`: one of activations.DISTRIBUTIONS, or None to draw it (shrinking to "gaussian"; see
    `FORCED_VALUES`); an activation-like case says so in extra["values"]. `grads`: the case feeds a
    backward, which bounds an activation-like x lower (activations.GRAD_X_MAX). `bias_array`: a
    bias array may be drawn (`bias_arrays`), for checks that make one call of this case's shape.
    """
    if large:
        share, budget = profiles.large_regime()
        shape = draw(sz.sizes(dtype, share, budget * budget_scale, equal_d=caps.d_in_equals_d_out,
                              min_tokens=min_tokens, min_batch=min_batch, max_batch=max_batch,
                              max_tokens=caps.max_tokens, grouped=caps.grouped_kv))
        config = draw(configs(caps, causal=causal, shape=shape))
        B, T = shape.B, shape.T
    else:
        config = draw(configs(caps, causal=causal))
        B = draw(integers(min_batch, max(min_batch, max_batch)))
        T = draw(tokens(caps.max_tokens, min_tokens))
    if bias_array:
        config = draw(bias_arrays(caps, config, B, T, dtype))
    kind = draw(sampled_from(PADDING_KINDS)) if padding and caps.key_padding_mask else "none"
    seed = draw(integers(0, 2**32 - 1))
    x_scales, param_scales = value_scales(dtype)
    x_scale = draw(sampled_from(x_scales))
    param_scale = draw(sampled_from(param_scales))
    if values is None:
        values = FORCED_VALUES or act.DISTRIBUTIONS[draw(integers(0, VALUES_ODDS - 1)) == VALUES_ODDS - 1]
    rng, x, params = _values(config, B, T, dtype, seed, x_scale, param_scale, values, grads)
    if values != "gaussian":
        extra = {"values": values}
    else:
        extra = {"param_scale": param_scale} if param_scale != 1 else {}
    return Case(config=config, dtype=dtype, x=x, params=params,
                key_padding_mask=padding_mask(kind, B, T, rng), seed=seed, x_scale=x_scale, extra=extra)


#: One drawn case in VALUES_ODDS is activation-like (conformance/suite/activations.py).
VALUES_ODDS = 4
#: Every drawn case of this distribution instead of a draw (None: drawn): calibration over one
#: distribution (`calibrate --values`). A case asking for one distribution keeps it.
FORCED_VALUES: str | None = None


def large_logit_target(dtype: str) -> float:
    """Largest |score| to aim for: past where a naive exp overflows, short of dtype overflow.

    float16 stops at 2e4 (its max is 65504, and Q @ K^T must stay finite in the plain
    reference too); wider dtypes reach 1e11, beyond a finite -1e9 "minus infinity" sentinel.
    """
    return 2e4 if dtype == "float16" else 1e11


@reused
@st.composite
def large_logit_cases(draw, caps: Capabilities, dtype: str, target: float | None = None) -> Case:
    """A Case whose scores reach `target` (default large_logit_target(dtype)): naive softmax overflows to NaN."""
    # Gaussian: scaling an activation-like x up to these scores would overflow its outlier channels
    case = draw(cases(caps, dtype, padding=False, values="gaussian"))
    from spec import steps  # the golden scores decide how far to scale x

    Q, K, _ = steps.project_qkv(case.x, case.params)
    K = kv_to_query_heads(K, case.config)  # (B, T, d_out): grouped K heads beside their query heads
    peak = float(np.max(np.abs(Q[:, :, None, :] * K[:, None, :, :]).sum(-1), initial=0.0))
    if peak == 0.0:
        return case
    factor = np.sqrt((target or large_logit_target(dtype)) / peak)  # scores are quadratic in x
    x = round_to(case.x * factor, dtype)
    return case.with_(x=x, x_scale=case.x_scale * float(factor))


def kv_to_query_heads(K: np.ndarray, config: AttentionConfig) -> np.ndarray:
    """K or V [B, T, d_kv] -> [B, T, d_out]: each query head's K/V head (h // group) in its place."""
    B, T, _ = K.shape
    heads = K.reshape(B, T, config.kv_heads, config.head_dim)  # (B, T, Hkv, hd)
    return np.repeat(heads, config.group, axis=2).reshape(B, T, config.d_out)  # (B, T, H * hd)


@reused
@st.composite
def head_permutations(draw, config: AttentionConfig) -> dict:
    """A head permutation that keeps grouping: the K/V heads in a new order (`kv`), each carrying
    its group of query heads, and one order of the query heads within every group (`within`).
    Ungrouped (n_kv_heads = H), `kv` is just a permutation of the heads; never the identity."""
    perms = st.tuples(st.permutations(range(config.kv_heads)), st.permutations(range(config.group)))
    kv, within = draw(perms.filter(lambda p: list(p[0]) != sorted(p[0]) or list(p[1]) != sorted(p[1])))
    return {"kv": list(kv), "within": list(within)}


def head_perm_indices(config: AttentionConfig, perm: dict) -> tuple[np.ndarray, np.ndarray]:
    """(query feature order [d_out], K/V feature order [d_kv]) of a `head_permutations` draw."""
    hd, g = config.head_dim, config.group
    q_heads = [kv * g + j for kv in perm["kv"] for j in perm["within"]]  # query head h reads K/V head h // g
    block = lambda heads: np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in heads])  # noqa: E731
    return block(q_heads), block(perm["kv"])


@reused
@st.composite
def head_perm_cases(draw, caps: Capabilities, dtype: str, base=None) -> Case:
    """An everyday case (or one of `base`, a strategy of cases) with more than one head and a
    grouping-preserving head permutation under extra["head_perm"]."""
    case = draw((cases(caps, dtype) if base is None else base).filter(lambda c: c.config.n_heads > 1))
    if case.config.bias is not None:  # ALiBi's slopes go by head index: they do not move with the heads
        case = case.with_(config=replace(case.config, bias=None))
    return case.with_(extra={**case.extra, "head_perm": draw(head_permutations(case.config))})


def head_order(config: AttentionConfig, q_idx: np.ndarray) -> list[int]:
    """The query heads in a `head_perm_indices` feature order: which head sits at each place."""
    return [int(h) for h in q_idx[::config.head_dim] // config.head_dim]


def permuted_sinks(config: AttentionConfig, q_idx: np.ndarray) -> AttentionConfig:
    """config with each head's sink moved with its head (unchanged without sinks)."""
    if config.sinks is None:
        return config
    return replace(config, sinks=tuple(config.sinks[h] for h in head_order(config, q_idx)))
