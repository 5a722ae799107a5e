"""KV-cache decoding: a prefill, then new tokens that attend over the cache (Capabilities.kv_cache).

Each check prefills the first t tokens of a case and decodes the rest one token at a time or
in chunks, and compares the outputs of the decoded tokens with the spec's cache code (the
golden and plain reference of `conformance.suite.cache_reference`, the tolerance model), which
equals the full causal forward at those positions. Every call's shapes are checked on the way
back: y_new [B, n, d_out] for each step's Tq = n queries over Tk = t + n keys, and, where the
backend exposes its cache (`cache_arrays`), K and V [B, H, t + n, head_dim] after each step.
A causal failure whose outputs match the top-left-aligned mask says so: it is the mistake
`is_causal=True` makes when Tq != Tk.

Decoding runs up to MAX_STEPS calls per example on the everyday shapes, and decode_in_chunks
also on the size regime's (a share of large T, H, head_dim, d_in, B x H); long caches (T up
to sizes.MAX_TOKENS = 4096) decode only the last few tokens, with B x H x head_dim small, so
the spec's cost stays that of a few rows of scores. Only these two draw large sizes: the
others' large draws doubled the checks' time (measured) and test the same code paths.

`steps_with_fewer_queries` needs no cache: a backend's exposed steps 7 to 12 get the last Tq
of Tk tokens as queries, and must return the step table's (Tq, Tk) shapes and the spec's values.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from conformance.suite import sizes as sz
from conformance.suite import strategies as cs
from conformance.suite.cache_reference import (
    TOP_LEFT,
    close_to,
    decode_golden_and_plain,
    kv_golden_and_plain,
    looks_top_left,
    top_left_weights,
)
from conformance.suite.case import round_to
from conformance.suite.checks import CheckFailure, check
from conformance.suite.reference import golden_and_plain
from conformance.suite.reused import reused
from impls.base import exposed_steps
from spec.block import intermediates
from spec.config import AttentionConfig
from spec.shapes import expected_shapes
from spec.table import STEPS, Trace, call_args

#: Decode calls per example at most: each is a backend call and a step of the spec's chain.
MAX_STEPS = 8
#: Tokens decoded after a long prompt: the size of the cache is what the long-cache check tests.
LONG_DECODE = 3


@reused
@st.composite
def chunking(draw, T: int, one_by_one: bool) -> tuple[int, list[int]]:
    """(t, chunk sizes): a prefill of t >= 1 tokens, then at most MAX_STEPS chunks up to T."""
    if one_by_one:
        n = draw(st.integers(1, min(T - 1, MAX_STEPS)))
        return T - n, [1] * n
    t = draw(st.integers(1, T - 1))
    cuts = draw(st.lists(st.integers(1, T - t - 1), max_size=MAX_STEPS - 1, unique=True)) if T - t > 1 else []
    edges = [t, *sorted(c + t for c in cuts), T]
    return t, [b - a for a, b in zip(edges, edges[1:])]


#: The size regime's budget share of a large decoding example: a prefill and its chunks through
#: the backend, then the spec decoded chunk by chunk beside the plain runs, cost about twice a
#: forward example (decode_in_chunks 93 ms of CPU per example against matches_spec's 54 ms, all
#: CPU backends, default profile, seed 2, 2026-12-06): half the budget keeps them even.
DECODE_BUDGET_SCALE = 0.5


@st.composite
def decoding_cases(draw, caps, dtype, *, one_by_one: bool, padding: bool = False, large: bool = False):
    """A case (T >= 2; `large`: of the size regime) with its prefill length and chunks in `extra`."""
    case = draw(cs.cases(caps, dtype, min_tokens=2, large=large, budget_scale=DECODE_BUDGET_SCALE).filter(
        lambda c: c.key_padding_mask is not None or not padding))
    t, chunks = draw(chunking(case.T, one_by_one))
    return case.with_(extra={**case.extra, "prefill": t, "chunks": chunks})


@st.composite
def long_cache_cases(draw, caps, dtype):
    """A prompt of up to 4096 tokens with one or two heads of head_dim <= 8, then a few decoded tokens."""
    T = draw(st.sampled_from([t for t in sz.TILE_EDGES if t > 129 and (caps.max_tokens or t) >= t]))
    H, hd = draw(st.integers(1, 2)), draw(st.integers(1, 8))
    d_in = H * hd if caps.d_in_equals_d_out else draw(st.integers(1, 8))
    causal = draw(st.sampled_from([m for m, ok in ((True, caps.causal), (False, caps.non_causal)) if ok]))
    config = AttentionConfig(d_in=d_in, d_out=H * hd, n_heads=H, causal=causal,
                             qkv_bias=caps.qkv_bias and draw(st.booleans()))
    param_scale = cs.value_scales(dtype)[1][0]
    case = cs.case_from(config, 1, T, dtype, seed=draw(st.integers(0, 2**32 - 1)), param_scale=param_scale)
    kind = draw(st.sampled_from(cs.PADDING_KINDS)) if caps.key_padding_mask else "none"
    kpm = cs.padding_mask(kind, 1, T, np.random.default_rng(case.seed))
    n = draw(st.integers(1, LONG_DECODE))
    chunks = [1] * n if draw(st.booleans()) else [n]
    return case.with_(key_padding_mask=kpm, extra={"param_scale": param_scale, "prefill": T - n, "chunks": chunks})


#: Keys in the index-width decode: one past what a 16-bit key index holds (xformers tests 1 + 2^16).
INDEX_WIDTH_KEYS = 2**16 + 1


def longest_cache(caps, dtype) -> list:
    """The fixed examples every run reaches: a 4095-token cache and one decoded token (T = 4096),
    and one decoded token over INDEX_WIDTH_KEYS keys (a cache of 2^16 tokens; cheap: one query,
    and the spec's prefill only projects), where the backend takes that many tokens."""
    param_scale = cs.value_scales(dtype)[1][0]
    out = []
    for T in (min(sz.MAX_TOKENS, caps.max_tokens or sz.MAX_TOKENS), INDEX_WIDTH_KEYS):
        if T == INDEX_WIDTH_KEYS and (caps.max_tokens or T) < T:
            continue
        config = AttentionConfig(d_in=4, d_out=4, n_heads=1, causal=caps.causal)
        case = cs.case_from(config, 1, T, dtype, seed=T, param_scale=param_scale)
        out.append(case.with_(extra={"param_scale": param_scale, "prefill": T - 1, "chunks": [1]}))
    return out


# -- running a decoding --------------------------------------------------------------------------
def decode_outputs(run, case, check_cache: bool = False) -> np.ndarray:
    """The backend's prefill of case.extra["prefill"] tokens, then each chunk decoded: (B, T - t, d_out).

    `check_cache`: K and V read back after the prefill and after each step, compared with the spec's.
    """
    x, kpm, config = case.x, case.key_padding_mask, case.config
    t = case.extra["prefill"]
    w = run.weights(case.params)
    # each token's K and V depend on that token alone: the spec's for all T, sliced to each step's t
    spec_kv = kv_golden_and_plain(case, case.T) if check_cache else None
    cache = run.prefill(x[:, :t], w, config, None if kpm is None else kpm[:, :t])
    if check_cache:
        _check_kv(run, case, cache, t, f"cache_kv after prefill of {t} tokens", spec_kv)
    ys, a = [], t
    for n in case.extra["chunks"]:
        b = a + n
        what = f"decode of tokens {a}..{b - 1} (Tq={n} over Tk={b})"
        y, cache = run.decode(what, x[:, a:b], cache, w, config, None if kpm is None else kpm[:, a:b])
        ys.append(y)  # (B, n, d_out)
        if check_cache:
            _check_kv(run, case, cache, b, f"cache_kv after {what}", spec_kv)
        a = b
    return np.concatenate(ys, axis=1)  # (B, T - t, d_out)


def _check_kv(run, case, cache, t: int, what: str, spec_kv: tuple) -> None:
    c = case.config
    got = run.cache_kv(what, cache, (case.B, c.kv_heads, t, c.head_dim))  # each K/V head once, never repeated
    for name, g, want, p in zip("KV", got, *spec_kv):
        run.assert_close(f"{what}: {name}", g, want[:, :, :t], p[:, :, :t])


def assert_decodes_as_spec(run, case, got: np.ndarray, what: str = "") -> None:
    """got (the decoded tokens' outputs) within the tolerance model of the spec's decoding; `what`
    is added to the failure's description."""
    golden, plain = decode_golden_and_plain(case)
    t = case.extra["prefill"]
    # rows a declared convention decides are left out: what "every key" means mid-decode is the
    # backend's own business; the forward's checks judge those rows against the declaration
    rows = run.property_rows(case.config, case.key_padding_mask, case.B, case.T)[:, t:]
    try:
        run.assert_close(f"decoded tokens {t}..{case.T - 1} after a prefill of {t}{what}", got[rows], golden[rows],
                         plain[rows])
    except CheckFailure as e:
        if e.tolerance is not None and rows.all() and looks_top_left(case, got, e.tolerance):
            raise CheckFailure(f"{e}; {TOP_LEFT}", e.max_error, e.tolerance) from None
        raise


# -- the checks ----------------------------------------------------------------------------------
@check(step=None, strategy=lambda caps, dtype: decoding_cases(caps, dtype, one_by_one=True),
       needs=("kv_cache",), examples=lambda caps, dtype: grouped_decodings(caps, dtype, (1,) * MAX_STEPS))
def decode_token_by_token(run, case):
    """Decoding token by token after a prefill of any length gives the full forward's outputs at every position."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case))


@check(step=None, strategy=lambda caps, dtype: decoding_cases(caps, dtype, one_by_one=False, large=True),
       needs=("kv_cache",))
def decode_in_chunks(run, case):
    """A prefill then chunks of any sizes (chunked prefill) give the spec's decoding outputs."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case))


@check(step=None, strategy=lambda caps, dtype: decoding_cases(caps, dtype, one_by_one=False, padding=True),
       needs=("key_padding_mask", "kv_cache"))
def decode_with_padding(run, case):
    """Padded earlier tokens stay invisible to every later token: the cache keeps their key padding."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case))


def grouped_decodings(caps, dtype, chunks: tuple[int, ...] = (3, 5)) -> list:
    """The fixed grouped-query examples (cs.grouped_representatives, none unless grouped_kv):
    a prefill of 17 - sum(chunks) tokens, then `chunks` (default 3 and 5; one by one: eight 1s)."""
    return [c.with_(extra={**c.extra, "prefill": c.T - sum(chunks), "chunks": list(chunks)})
            for c in cs.grouped_representatives(caps, dtype)]


@check(step=None, strategy=lambda caps, dtype: decoding_cases(caps, dtype, one_by_one=False),
       needs=("kv_cache", "cache_arrays"), examples=grouped_decodings)
def cache_holds_spec_kv(run, case):
    """The cache holds each K/V head's K and V [B, n_kv_heads, t, head_dim] of the spec after the prefill and every step."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case, check_cache=True))


@check(step=None, strategy=long_cache_cases, needs=("kv_cache",), examples=longest_cache)
def decode_long_cache(run, case):
    """Decoding after a prompt of up to 4096 tokens gives the spec's outputs (long caches)."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case))


@st.composite
def branching_cases(draw, caps, dtype):
    """A case (T >= 3), a prefill of t tokens, a first chunk of n and the rest (two chunks), and the
    seed of the other branch's tokens."""
    case = draw(cs.cases(caps, dtype, min_tokens=3))
    t = draw(st.integers(1, case.T - 2))
    n = draw(st.integers(1, case.T - t - 1))
    return case.with_(extra={**case.extra, "prefill": t, "chunks": [n, case.T - t - n],
                             "branch_seed": draw(st.integers(0, 2**31 - 1))})


def _decode_chunks(run, x, kpm, cache, w, config, a: int, chunks: list[int], branch: str) -> tuple[list, object]:
    """Decode x[:, a:] chunk by chunk from `cache`: ([y per chunk], the last cache)."""
    ys = []
    for n in chunks:
        b = a + n
        y, cache = run.decode(f"decode of branch {branch}'s tokens {a}..{b - 1} (Tq={n} over Tk={b})", x[:, a:b],
                              cache, w, config, None if kpm is None else kpm[:, a:b])
        ys.append(y)  # (B, n, d_out)
        a = b
    return ys, cache


@check(step=None, strategy=branching_cases, needs=("kv_cache",))
def decode_branches_from_one_cache(run, case):
    """Two continuations decoded from one cache each give the spec's outputs: decode leaves its input cache unchanged.

    After a prefill of t tokens: branch A's first chunk, then branch B's (other tokens) from the
    same cache, then the rest of each from its own cache, then A's first chunk a third time.
    """
    t, (n, rest) = case.extra["prefill"], case.extra["chunks"]
    x, kpm, config = case.x, case.key_padding_mask, case.config
    rng = np.random.default_rng(case.extra["branch_seed"])
    x_b = x.copy()
    x_b[:, t:] = round_to(rng.standard_normal(x[:, t:].shape) * case.x_scale, case.dtype)  # B's own tokens
    w = run.weights(case.params)
    cache = run.prefill(x[:, :t], w, config, None if kpm is None else kpm[:, :t])
    ya, cache_a = _decode_chunks(run, x, kpm, cache, w, config, t, [n], "A")
    yb, cache_b = _decode_chunks(run, x_b, kpm, cache, w, config, t, [n], "B")  # from the same cache as A
    ya += _decode_chunks(run, x, kpm, cache_a, w, config, t + n, [rest], "A")[0]
    yb += _decode_chunks(run, x_b, kpm, cache_b, w, config, t + n, [rest], "B")[0]
    again, _ = _decode_chunks(run, x, kpm, cache, w, config, t, [n], "A")  # the prompt's cache a third time
    assert_decodes_as_spec(run, case, np.concatenate(ya, axis=1),
                           f" (branch A, its first chunk of {n} decoded before branch B's from the same cache)")
    assert_decodes_as_spec(run, case.with_(x=x_b), np.concatenate(yb, axis=1),
                           f" (branch B: other tokens, its first chunk decoded from the cache branch A used)")
    first = case.with_(x=x[:, :t + n], key_padding_mask=None if kpm is None else kpm[:, :t + n],
                       extra={**case.extra, "chunks": [n]})
    assert_decodes_as_spec(run, first, again[0], " (branch A's first chunk again, after both branches)")


# -- the steps with queries apart from keys (no cache needed) -----------------------------------


@st.composite
def fewer_queries_cases(draw, caps, dtype):
    """A case (T >= 2) and Tq < T: the last Tq tokens query all T."""
    case = draw(cs.cases(caps, dtype, min_tokens=2))
    return case.with_(extra={**case.extra, "Tq": draw(st.integers(1, case.T - 1))})


@check(step=None, strategy=fewer_queries_cases, steps=(7, 8, 9), any_step=True)
def steps_with_fewer_queries(run, case):
    """Steps 7 to 12 with the last Tq < Tk tokens as queries give the step table's shapes and the spec's values."""
    cfg, B, Tk, Tq = case.config, case.B, case.T, case.extra["Tq"]
    tq, tk = intermediates(case.x[:, -Tq:], case.params, cfg), intermediates(case.x, case.params, cfg)
    heads = [name for n in (4, 5, 6) for name in STEPS[n].outputs]  # Q, K, V, ..., q, k, v
    trace = Trace({name: round_to((tq if name.lower().startswith("q") else tk)[name], case.dtype) for name in heads},
                  params=case.params)
    exposed, w = set(exposed_steps(run.backend)), run.weights(case.params)
    for n in range(7, 13):
        s = STEPS[n]
        args, kw = call_args(n, trace, cfg, case.key_padding_mask)  # the spec's previous step, rounded to D
        golden, plain = golden_and_plain(s.fn, case.dtype, *args, **kw)
        if n in exposed:
            bargs, bkw = call_args(n, trace, cfg, case.key_padding_mask, weights=w)
            got = run.step(s.name, *bargs, shapes=expected_shapes(n, cfg, B, Tq, Tk), **bkw)
            try:
                run.assert_close(f"step {n} {s.name} with Tq={Tq} queries over Tk={Tk} keys", got, golden, plain)
            except CheckFailure as e:
                if n == 8 and cfg.causal and close_to(got, top_left_weights(*args, **kw), e.tolerance):
                    raise CheckFailure(f"{e}; {TOP_LEFT}", e.max_error, e.tolerance) from None
                raise
        trace[s.outputs[0]] = round_to(golden, case.dtype)
