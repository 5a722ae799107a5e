"""KV-cache decoding: a prefill, then new tokens that attend over the cache (Capabilities.kv_cache).

Each check prefills the first t tokens of a case and decodes the rest one token at a time or
in chunks, and compares the outputs of the decoded tokens with the spec's cache code (the
golden and plain reference of `conformance.suite.cache_reference`, the tolerance model), which
equals the full causal forward at those positions. Every call's shapes are checked on the way
back: y_new [B, n, d_out] for each step's Tq = n queries over Tk = t + n keys, and, where the
backend exposes its cache (`cache_arrays`), K and V [B, H, t + n, head_dim] after each step.
A causal failure whose outputs match the top-left-aligned mask says so: it is the mistake
`is_causal=True` makes when Tq != Tk.

Decoding runs up to MAX_STEPS calls per example on the everyday and size-regime shapes; long
caches (T up to sizes.MAX_TOKENS = 4096) decode only the last few tokens, with B x H x
head_dim small, so the spec's cost stays that of a few rows of scores.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from conformance.suite import sizes as sz
from conformance.suite import strategies as cs
from conformance.suite.cache_reference import decode_golden_and_plain, kv_golden_and_plain, looks_top_left
from conformance.suite.checks import CheckFailure, check
from spec.config import AttentionConfig

#: Decode calls per example at most: each is a backend call and a step of the spec's chain.
MAX_STEPS = 8
#: Tokens decoded after a long prompt: the size of the cache is what the long-cache check tests.
LONG_DECODE = 3


def _requires_cache(backend) -> str | None:
    return None if backend.capabilities.kv_cache else "KV-cache decoding not declared (Capabilities.kv_cache)"


def _requires_cache_padding(backend) -> str | None:
    if not backend.capabilities.key_padding_mask:
        return "key padding masks are not supported"
    return _requires_cache(backend)


def _requires_cache_arrays(backend) -> str | None:
    return None if backend.capabilities.cache_arrays else "cache not exposed (Capabilities.cache_arrays)"


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


@st.composite
def decoding_cases(draw, caps, dtype, *, one_by_one: bool, padding: bool = False):
    """A case of the size regime (T >= 2) with its prefill length and chunks in `extra`."""
    case = draw(cs.cases(caps, dtype, min_tokens=2, large=True).filter(
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


def longest_cache(caps, dtype) -> list:
    """The fixed example every run reaches: a 4095-token cache and one decoded token (T = 4096)."""
    T = min(sz.MAX_TOKENS, caps.max_tokens or sz.MAX_TOKENS)
    config = AttentionConfig(d_in=4, d_out=4, n_heads=1, causal=caps.causal)
    param_scale = cs.value_scales(dtype)[1][0]
    case = cs.case_from(config, 1, T, dtype, seed=T, param_scale=param_scale)
    return [case.with_(extra={"param_scale": param_scale, "prefill": T - 1, "chunks": [1]})]


# -- running a decoding --------------------------------------------------------------------------
def decode_outputs(run, case, check_cache: bool = False) -> np.ndarray:
    """The backend's prefill of case.extra["prefill"] tokens, then each chunk decoded: (B, T - t, d_out).

    `check_cache`: K and V read back after the prefill and after each step, compared with the spec's.
    """
    x, kpm, config = case.x, case.key_padding_mask, case.config
    t = case.extra["prefill"]
    w = run.weights(case.params)
    cache = run.prefill(x[:, :t], w, config, None if kpm is None else kpm[:, :t])
    if check_cache:
        _check_kv(run, case, cache, t, f"cache_kv after prefill of {t} tokens")
    ys, a = [], t
    for n in case.extra["chunks"]:
        b = a + n
        what = f"decode of tokens {a}..{b - 1} (Tq={n} over Tk={b})"
        y, cache = run.decode(what, x[:, a:b], cache, w, config, None if kpm is None else kpm[:, a:b])
        ys.append(y)  # (B, n, d_out)
        if check_cache:
            _check_kv(run, case, cache, b, f"cache_kv after {what}")
        a = b
    return np.concatenate(ys, axis=1)  # (B, T - t, d_out)


def _check_kv(run, case, cache, t: int, what: str) -> None:
    c = case.config
    got = run.cache_kv(what, cache, (case.B, c.n_heads, t, c.head_dim))
    golden, plain = kv_golden_and_plain(case, t)
    for name, g, want, p in zip("KV", got, golden, plain):
        run.assert_close(f"{what}: {name}", g, want, p)


def assert_decodes_as_spec(run, case, got: np.ndarray) -> None:
    """got (the decoded tokens' outputs) within the tolerance model of the spec's decoding."""
    golden, plain = decode_golden_and_plain(case)
    t = case.extra["prefill"]
    try:
        run.assert_close(f"decoded tokens {t}..{case.T - 1} after a prefill of {t}", got, golden, plain)
    except CheckFailure as e:
        if e.tolerance is not None and looks_top_left(case, got, e.tolerance):
            raise CheckFailure(f"{e}; the outputs match a causal mask aligned top-left (query i sees keys "
                               f"j <= i, as is_causal=True does when Tq != Tk): the spec aligns it "
                               f"bottom-right (new token i is position Tk - Tq + i and sees keys j <= "
                               f"Tk - Tq + i)", e.max_error, e.tolerance) from None
        raise


# -- the checks ----------------------------------------------------------------------------------
@check(step=None, strategy=lambda caps, dtype: decoding_cases(caps, dtype, one_by_one=True),
       requires=_requires_cache)
def decode_token_by_token(run, case):
    """Decoding token by token after a prefill of any length gives the full forward's outputs at every position."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case))


@check(step=None, strategy=lambda caps, dtype: decoding_cases(caps, dtype, one_by_one=False),
       requires=_requires_cache)
def decode_in_chunks(run, case):
    """A prefill then chunks of any sizes (chunked prefill) give the spec's decoding outputs."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case))


@check(step=None, strategy=lambda caps, dtype: decoding_cases(caps, dtype, one_by_one=False, padding=True),
       requires=_requires_cache_padding)
def decode_with_padding(run, case):
    """Padded earlier tokens stay invisible to every later token: the cache keeps their key padding."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case))


@check(step=None, strategy=lambda caps, dtype: decoding_cases(caps, dtype, one_by_one=False),
       requires=lambda b: _requires_cache(b) or _requires_cache_arrays(b))
def cache_holds_spec_kv(run, case):
    """The cache holds each head's K and V [B, H, t, head_dim] of the spec after the prefill and every step."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case, check_cache=True))


@check(step=None, strategy=long_cache_cases, requires=_requires_cache, examples=longest_cache)
def decode_long_cache(run, case):
    """Decoding after a prompt of up to 4096 tokens gives the spec's outputs (long caches)."""
    assert_decodes_as_spec(run, case, decode_outputs(run, case))
