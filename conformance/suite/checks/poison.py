"""Poisoned positions: inputs the spec says cannot matter hold huge finite values, and nothing they cannot reach moves.

Two kinds of positions cannot matter to some rows: a padded token's input (the padding mask
masks its key for every query) and, under causal attention, a token after position t (rows
0..t never see it). `poisoned_inputs` replaces those tokens' inputs by the largest finite values
whose projections (Q, K, V) and scores, every one of them, stay finite in dtype D: each within a
quarter of D's largest finite number (POISON_HEADROOM: a correct backend's own order of
summation may round up), bounded as sums of absolute values so that any order of the sums stays
finite (a score's bound from the largest |q| and |k| per feature: O(T d) to compute). A score
between two poisoned tokens is quadratic in the poison, so float16 keeps it near 1e2 and float32
near 1e18. The poisoned tokens' own rows are not compared: a padded token is still a query, and
its output depends on its own input.

The compared rows, those neither poisoned nor decided by a declared row convention
(`Runner.property_rows`), must equal the backend's own clean run (`Runner.assert_same`; the
spec's golden sets only the scale). A masked key must contribute exactly nothing: a finite
-1e9 added to its score, or its exponential zeroed by multiplying it by 0 (0 x inf = NaN once
it overflows), lets a poisoned key through, though both pass every check on moderate inputs.

A backend that declares `Capabilities.non_finite_masked_inputs` is also drawn non-finite poison
(`NON_FINITE_FILLS`: NaN, +inf, -inf, or each element one of the three): the spec's masked key
contributes nothing even then (a select, see `spec.steps.attn_weights` and `context`), and the
compared rows must equal the clean run's in the same way. Every other backend draws only the
finite poison (no extra draw, so its examples are unchanged). The inputs reach the backend as
they are: nothing cleans them up on the way.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.case import Case, round_to
from conformance.suite.checks import check
from conformance.suite.reference import forward_golden_and_plain
from conformance.suite.tolerance import largest_finite
from spec import steps as S

#: Poison reaches D's largest finite number divided by this: room for a backend's rounding and
#: order of summation (each bound below is a sum of absolute values, already past any order's).
POISON_HEADROOM = 4.0
#: The size regime's budget share of a poisoned example: two forwards and the golden as causality,
#: plus the poison's bounds; a quarter keeps the check near causality's CPU time (T to about 1400
#: in float32, 800 in float16), and a padded key in a partial tile is reached well before that.
POISON_BUDGET_SCALE = 0.25
#: Padding layouts the check draws: left (early causal queries see little), right (the usual
#: batch padding: under causal the padded tokens are also future tokens), random.
POISON_PADDINGS = ("left", "right", "random")
#: What the poisoned tokens' inputs hold for a backend that declares non-finite masked inputs:
#: the finite poison, NaN, +inf, -inf, or a mix (each element NaN, +inf or -inf at random).
NON_FINITE_FILLS = ("finite", "nan", "inf", "-inf", "mixed")


def poisoned_tokens(case: Case) -> np.ndarray:
    """[B, T] bool: the tokens whose inputs are poisoned (padded, and past t under causal attention)."""
    poison = np.zeros((case.B, case.T), dtype=bool) if case.key_padding_mask is None else ~case.key_padding_mask
    if case.config.causal:
        poison[:, case.extra["t"] + 1:] = True
    return poison


def compared_rows(run, case: Case) -> np.ndarray:
    """[B, T] bool: rows no poisoned input may reach and no declared convention decides."""
    return run.property_rows(case.config, case.key_padding_mask, case.B, case.T) & ~poisoned_tokens(case)


_heads = S.heads  # [B, T, d_out] -> [B, H, T, hd]: the spec's head split


def _score_bound(qa: np.ndarray, ka: np.ndarray, H: int, axis: int, Hkv: int | None = None) -> np.ndarray:
    """A bound on |q_i . k_j| in any order of summation, from |Q|, |K| bounds [B, T, d_out], for each
    token on `axis` (2: each query, over every key; 3: each key, over every query): [B, H, T].

    Separable, sum_d max_i |q_i,d| |k_j,d|, so it costs O(T d), not the scores' O(T^2 d)."""
    Hkv = H if Hkv is None else Hkv
    qh = _heads(qa, H)  # (B, H, T, hd)
    kh = np.repeat(_heads(ka, Hkv), H // Hkv, axis=1)  # (B, H, T, hd): K/V head h // group for query head h
    if axis == 2:
        return (qh * kh.max(2, keepdims=True)).sum(-1)  # (B, H, T): each query
    return (kh * qh.max(2, keepdims=True)).sum(-1)  # (B, H, T): each key


def poisoned_inputs(case: Case) -> np.ndarray:
    """x with each poisoned token's input a random direction scaled as far as D allows (see the module doc)."""
    p, H, Hkv = case.params, case.config.n_heads, case.config.kv_heads
    limit = largest_finite(case.dtype) / POISON_HEADROOM
    poison = poisoned_tokens(case)
    rng = np.random.default_rng(case.extra["poison_seed"])
    u = rng.standard_normal(case.x.shape) * poison[..., None]  # (B, T, d_in), zero where clean
    u /= np.maximum(np.abs(u).max(-1, keepdims=True), 1e-300)  # |u| <= 1: x = c u needs c <= limit
    # the bounds of two poisoned tokens' scores are squares of float64's range: long double there
    work = np.longdouble if case.dtype == "float64" else np.float64
    au, ax = np.abs(u).astype(work), (np.abs(case.x) * ~poison[..., None]).astype(work)
    Ws = [np.abs(W).astype(work) for W in (p.W_q, p.W_k, p.W_v)]
    bs = [work(0.0) if b is None else np.abs(b).astype(work) for b in (p.b_q, p.b_k, p.b_v)]
    unit = [au @ W.T for W in Ws]  # (B, T, d_out): |projection| per unit of c, bias apart
    clean = [ax @ W.T + b for W, b in zip(Ws, bs)]  # (B, T, d_out): the clean tokens' |Q|, |K|, |V| bounds
    c = np.full((case.B, case.T), limit, dtype=work)  # the input itself
    # a bound past the working range binds nothing: inf, and the minimum takes the others
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for a, b in zip(unit, bs):
            c = np.minimum(c, (limit - np.max(b, initial=0.0)) / a.max(-1))
        # scores of clean queries against poisoned keys and back, linear in c
        lin_k = _score_bound(clean[0], unit[1], H, axis=3, Hkv=Hkv).max(1)  # (B, T): each key, worst head
        lin_q = _score_bound(unit[0], clean[1], H, axis=2, Hkv=Hkv).max(1)  # (B, T): each query, worst head
        c = np.minimum(c, (limit / 2) / lin_k)  # half the room: the biases' share is checked below
        c = np.minimum(c, (limit / 2) / lin_q)
        c = np.where(poison, c, 0.0)
        # every score, those between two poisoned tokens quadratic in c: shrink until all fit
        for _ in range(8):
            qa = clean[0] + c[..., None] * unit[0]  # (B, T, d_out): |Q| bound, the bias in `clean`
            ka = clean[1] + c[..., None] * unit[1]
            worst = np.max(_score_bound(qa, ka, H, axis=2, Hkv=Hkv), initial=0.0)
            if worst <= limit:
                break
            c = c * min(0.999, np.sqrt(limit / worst))
    x = case.x.copy()
    x[poison] = round_to(u[poison] * c[poison].astype(np.float64)[:, None], case.dtype)
    return x


def non_finite_inputs(case: Case, fill: str) -> np.ndarray:
    """x with each poisoned token's input NaN, +inf, -inf, or ("mixed") each element one of the three."""
    x = case.x.copy()
    poison = poisoned_tokens(case)
    if fill == "mixed":
        rng = np.random.default_rng(case.extra["poison_seed"])
        x[poison] = rng.choice(np.array([np.nan, np.inf, -np.inf]), size=(int(poison.sum()), case.x.shape[-1]))
    else:
        x[poison] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[fill]
    return x


@st.composite
def poison_cases(draw, caps, dtype):
    """A case of the size regime, its causal split t (rows 0..t compared) and a padding layout."""
    causal = None if caps.key_padding_mask else True  # without padding only future tokens can be poisoned
    case = draw(cs.cases(caps, dtype, causal=causal, padding=False, min_tokens=2, large=True,
                         budget_scale=POISON_BUDGET_SCALE))
    B, T = case.B, case.T
    kinds = (POISON_PADDINGS if caps.key_padding_mask else ()) + (("none",) if case.config.causal else ())
    kind = draw(st.sampled_from(kinds))
    kpm = None
    if kind != "none":
        kpm = np.ones((B, T), dtype=bool)
        n = draw(st.integers(1, T - 1))  # padded tokens per row: at least one, never all
        if kind == "left":
            kpm[:, :n] = False
        elif kind == "right":
            kpm[:, T - n:] = False
        else:
            rng = np.random.default_rng(case.seed + 1)
            for b in range(B):
                kpm[b, rng.choice(T, size=n, replace=False)] = False
    t = T - 1  # non-causal: only the padded tokens are poisoned
    if case.config.causal:
        # rows 0..t are compared: t at or past some row's first unpadded token, and, without
        # padding, short of the last token (something must be poisoned)
        first = 0 if kpm is None else int(np.argmax(kpm, axis=1).min())
        t = draw(st.integers(first, T - 1 if kind != "none" else T - 2))
    extra = {**case.extra, "t": t, "padding": kind, "poison_seed": draw(st.integers(0, 2**31 - 1))}
    if caps.non_finite_masked_inputs:  # declared: NaN and +-inf too (others draw nothing more)
        extra["fill"] = draw(st.sampled_from(NON_FINITE_FILLS))
    return case.with_(key_padding_mask=kpm, extra=extra)


@check(step=None, strategy=poison_cases, needs=("maskable",))
def poisoned_positions_ignored(run, case):
    """Huge finite inputs at padded tokens (and causal future tokens) leave every other row as in the clean run
    (NaN and +-inf too, where declared)."""
    rows = compared_rows(run, case)
    if not rows.any():  # every compared row is decided by a declared convention: nothing to judge
        return
    fill = case.extra.get("fill", "finite")
    x = poisoned_inputs(case) if fill == "finite" else non_finite_inputs(case, fill)
    clean = run.forward(case)
    dirty = run.forward(case.with_(x=x))
    golden, plain = forward_golden_and_plain(case)  # the allowance's scale only
    t = case.extra["t"]
    where = f"padded tokens{f' and tokens {t + 1}..' if case.config.causal and t < case.T - 1 else ''}"
    size = (f"up to {float(np.max(np.abs(x), initial=0.0)):.3g}" if fill == "finite" else
            f"{fill} (declared non_finite_masked_inputs)")
    run.assert_same(f"{int(rows.sum())} rows that never see the poisoned inputs ({where}, {size}) vs the clean run",
                    dirty, clean, golden, plain, rows)
