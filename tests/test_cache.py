"""The spec's KV-cache decoding (spec/cache.py) and its queries-apart-from-keys block
(spec.block.attend): decoding equals the full forward, whatever the prefill length and the
chunking, with padding of earlier tokens; the cache holds the spec's K and V; Tq != Tk shapes
follow the step table; the bottom-right alignment matters; invalid inputs are ValueErrors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spec import (
    STEPS,
    AttentionConfig,
    Cache,
    Trace,
    attend,
    decode,
    expected_shapes,
    forward,
    init_params,
    intermediates,
    numpy_dtype,
    prefill,
    qkv_heads,
    sample_dropout_mask,
)
from spec import steps as S
from spec.table import call_args

# Decoding and the full forward run the same float64 operations on differently shaped operands
# (one query row against all T, keys projected per chunk), so they differ only by BLAS
# summation order: measured worst 1.1e-15 of max|y| over 30 random configs and every prefill
# length. 1e-13 (about 450 ulp) allows that and still catches any wrong weight or position.
TOL = 1e-13


def _case(seed: int, causal: bool = True, T: int | None = None):
    rng = np.random.default_rng(seed)
    B, H, hd, d_in = (int(rng.integers(lo, hi)) for lo, hi in ((1, 4), (1, 5), (1, 9), (1, 10)))
    T = int(rng.integers(2, 10)) if T is None else T
    cfg = AttentionConfig(d_in=d_in, d_out=H * hd, n_heads=H, causal=causal, qkv_bias=bool(seed % 2))
    x = rng.standard_normal((B, T, d_in))
    kpm = rng.random((B, T)) > 0.3
    return cfg, init_params(cfg, seed), x, kpm


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _decode_in_chunks(x, params, cfg, sizes, kpm=None):
    """Prefill the first sizes[0] tokens, then decode the following chunks; all outputs after it."""
    edges = np.cumsum(sizes)
    m = (lambda a, b: None) if kpm is None else (lambda a, b: kpm[:, a:b])
    cache = prefill(x[:, :edges[0]], params, cfg, m(0, edges[0]))
    ys = []
    for a, b in zip(edges[:-1], edges[1:]):
        y, cache = decode(x[:, a:b], cache, params, cfg, m(a, b))
        ys.append(y)
    return np.concatenate(ys, axis=1), cache


# -- the block with queries apart from keys ------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_forward_is_attend_over_its_own_heads(causal):
    cfg, p, x, kpm = _case(3, causal)
    cfg = AttentionConfig(cfg.d_in, cfg.d_out, cfg.n_heads, causal, cfg.qkv_bias, dropout_p=0.25)
    B, T = x.shape[:2]
    drop = sample_dropout_mask((B, cfg.n_heads, T, T), 0.25, seed=1)
    assert np.array_equal(attend(*qkv_heads(x, p, cfg), p, cfg, kpm, drop), forward(x, p, cfg, kpm, drop))


@pytest.mark.parametrize("Tq", [1, 2, 5])
def test_tq_tk_shapes_follow_the_step_table(Tq):
    # the last Tq tokens query all Tk = 7: steps 4-6 from each token set, 7-12 through the table
    cfg, p, x, kpm = _case(4, T=7)
    B, Tk = x.shape[:2]
    tq, tk = intermediates(x[:, -Tq:], p, cfg), intermediates(x, p, cfg)
    names = [name for n in (4, 5, 6) for name in STEPS[n].outputs]  # Q, K, V, Q_split, ..., q, k, v
    trace = Trace({name: (tq if name.lower().startswith("q") else tk)[name] for name in names}, params=p)
    for n in range(7, 13):
        args, kw = call_args(n, trace, cfg, kpm)
        trace[STEPS[n].outputs[0]] = STEPS[n].fn(*args, **kw)
    for n in range(4, 13):
        got = tuple(a.shape for a in (trace[n] if len(STEPS[n].outputs) > 1 else (trace[n],)))
        assert got == expected_shapes(n, cfg, B, Tq, Tk=Tk), f"step {n}"
    q, k, v = tq["q"], tk["k"], tk["v"]
    assert np.array_equal(attend(q, k, v, p, cfg, kpm), trace["out"])
    if Tq < Tk:
        y, _ = _decode_in_chunks(x, p, cfg, [Tk - Tq, Tq], kpm)
        assert _rel_err(y, trace["out"]) <= TOL


# -- decoding equals the full forward --------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_token_by_token_decoding_from_every_prefill_length_equals_forward(seed):
    cfg, p, x, kpm = _case(seed)
    T = x.shape[1]
    for mask in (None, kpm):
        y = forward(x, p, cfg, mask)
        for t in range(1, T):
            got, cache = _decode_in_chunks(x, p, cfg, [t] + [1] * (T - t), mask)
            assert got.shape == y[:, t:].shape and cache.length == T
            assert _rel_err(got, y[:, t:]) <= TOL, f"prefill {t}, mask {mask is not None}"


@pytest.mark.parametrize("seed", [0, 1])
def test_every_chunking_equals_forward(seed):
    cfg, p, x, kpm = _case(seed, T=6)
    y = forward(x, p, cfg, kpm)
    for cuts in itertools.product([False, True], repeat=5):  # all 32 ways to cut 6 tokens
        sizes = np.diff([0] + [i + 1 for i, c in enumerate(cuts) if c] + [6]).tolist()
        if len(sizes) == 1:
            continue  # no chunk to decode: prefill alone returns no outputs
        got, _ = _decode_in_chunks(x, p, cfg, sizes, kpm)
        assert _rel_err(got, y[:, sizes[0]:]) <= TOL, sizes


def test_non_causal_decoding_sees_every_token_of_its_chunk():
    # causal=False: one chunk after the prompt sees all T keys, as the encoder's forward does;
    # token by token, a token cannot see the tokens that come after it, so it differs
    cfg, p, x, kpm = _case(5, causal=False, T=6)
    y = forward(x, p, cfg, kpm)
    got, _ = _decode_in_chunks(x, p, cfg, [2, 4], kpm)
    assert _rel_err(got, y[:, 2:]) <= TOL
    one_by_one, _ = _decode_in_chunks(x, p, cfg, [2, 1, 1, 1, 1], kpm)
    assert _rel_err(one_by_one, y[:, 2:]) > 1e-3


# -- padding of earlier tokens -------------------------------------------------------------
def test_padding_of_earlier_tokens_is_kept_in_the_cache():
    cfg, p, x, _ = _case(6, T=8)
    B = x.shape[0]
    x = np.concatenate([x, x[:1] * 0.5], axis=0) if B == 1 else x
    kpm = np.ones((x.shape[0], 8), dtype=bool)
    kpm[1, :3] = False  # left padding of the second sequence's prompt
    kpm[0, 5] = False  # a decoded token of the first sequence, padded
    y = forward(x, p, cfg, kpm)
    got, cache = _decode_in_chunks(x, p, cfg, [4, 1, 1, 1, 1], kpm)
    assert _rel_err(got, y[:, 4:]) <= TOL
    assert np.array_equal(cache.key_padding_mask, kpm)
    # the cached mask is what hides the padded prompt tokens: forgetting it changes the outputs
    c4 = prefill(x[:, :4], p, cfg, kpm[:, :4])
    forgot = Cache(c4.k, c4.v, np.ones_like(c4.key_padding_mask))
    y_ok, y_forgot = decode(x[:, 4:5], c4, p, cfg)[0], decode(x[:, 4:5], forgot, p, cfg)[0]
    assert _rel_err(y_forgot[1], y_ok[1]) > 1e-3 and np.array_equal(y_forgot[0], y_ok[0])


def test_a_new_token_with_nothing_to_attend_gets_a_zero_context():
    cfg, p, x, _ = _case(7, T=3)
    none = np.zeros((x.shape[0], 2), dtype=bool)
    y, _ = decode(x[:, 2:], prefill(x[:, :2], p, cfg, none), p, cfg, np.zeros((x.shape[0], 1), dtype=bool))
    assert np.array_equal(y, np.broadcast_to(p.b_o, y.shape))  # zero context, then + b_o


# -- what the cache holds ------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cache_holds_the_spec_k_and_v(seed):
    cfg, p, x, kpm = _case(seed, T=7)
    B, T = x.shape[:2]
    c3 = prefill(x[:, :3], p, cfg, kpm[:, :3])
    spec3 = intermediates(x[:, :3], p, cfg)
    assert np.array_equal(c3.k, spec3["k"]) and np.array_equal(c3.v, spec3["v"])
    _, cache = _decode_in_chunks(x, p, cfg, [3, 2, 1, 1], kpm)
    spec = intermediates(x, p, cfg)
    assert cache.k.shape == cache.v.shape == (B, cfg.n_heads, T, cfg.head_dim)
    assert _rel_err(cache.k, spec["k"]) <= TOL and _rel_err(cache.v, spec["v"]) <= TOL
    assert np.array_equal(cache.key_padding_mask, kpm)
    assert c3.length == 3  # decoding returned new caches; the prefilled one is unchanged


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_decoding_keeps_the_dtype(dtype):
    cfg, p, x, kpm = _case(8, T=5)
    D = numpy_dtype(dtype)
    p, x = p.map(lambda a: a.astype(D)), x.astype(D)
    y, cache = _decode_in_chunks(x, p, cfg, [2, 1, 2], kpm)
    assert y.dtype == cache.k.dtype == cache.v.dtype == D
    assert np.isfinite(y.astype(np.float64)).all()


# -- the alignment matters -----------------------------------------------------------------
def test_top_left_alignment_gives_different_outputs(monkeypatch):
    cfg, p, x, _ = _case(9, T=6)
    y = forward(x, p, cfg)
    import spec.masks  # the spec's one mask: step 8 and the cache both build theirs there

    monkeypatch.setattr(spec.masks, "causal_mask", lambda Tq, Tk: np.triu(np.ones((Tq, Tk), dtype=bool), k=1))
    assert np.array_equal(forward(x, p, cfg), y)  # Tq == Tk: both alignments are the same mask
    got, _ = _decode_in_chunks(x, p, cfg, [3, 1, 2])
    assert _rel_err(got, y[:, 3:]) > 1e-3  # decoding top-left: token 3 would see key 0 only


# -- invalid inputs --------------------------------------------------------------------------
def _bad_calls():
    cfg = AttentionConfig(d_in=5, d_out=6, n_heads=2)
    p = init_params(cfg)
    x = np.random.default_rng(0).standard_normal((2, 4, 5))
    q, k, v = qkv_heads(x, p, cfg)
    c = prefill(x[:, :3], p, cfg)
    other = AttentionConfig(d_in=5, d_out=6, n_heads=3)
    return [
        (lambda: attend(q, k[:, :, :2], v[:, :, :2], p, cfg), r"Tq=4 > Tk=2"),
        (lambda: attend(q, k, v[:, :, :3], p, cfg), r"k \(2, 2, 4, 3\) and v \(2, 2, 3, 3\)"),
        (lambda: attend(q[:1], k, v, p, cfg), r"B=1 but k and v have B=2"),
        (lambda: attend(q, k, v, p, other), r"H=3, T, head_dim=2\), got \(2, 2, 4, 3\)"),
        (lambda: attend(q, k.astype(np.float32), v, p, cfg), r"float64, float32, float64"),
        (lambda: decode(x[:, 3:].astype(np.float32), c, p.map(lambda a: a.astype(np.float32)), cfg),
         r"cache.k has dtype float64 but x_new has dtype float32"),
        (lambda: decode(x[:1, 3:], c, p, cfg), r"cache.k has shape \(2, 2, 3, 3\).*\(1, 2, t, 3\)"),
        (lambda: decode(x[:, 3:], prefill(x[:, :3], init_params(other), other), p, cfg),
         r"cache.k has shape \(2, 3, 3, 2\).*\(2, 2, t, 3\)"),
        (lambda: decode(x[:, 3:], c, p, cfg, np.ones((2, 3), bool)), r"key_padding_mask_new must .*\(2, 1\), got \(2, 3\)"),
        (lambda: prefill(x, p, cfg, np.ones((2, 4))), r"key_padding_mask must be boolean.*float64"),
        (lambda: decode(x[:, 3:, :4], c, p, cfg), r"d_in=4 .* d_in=5"),
        (lambda: decode(x[:, 3:], (c.k, c.v), p, cfg), r"spec.cache.Cache .* got tuple"),
        (lambda: decode(x[:, 3:], Cache(c.k, c.v, c.key_padding_mask[:, :2]), p, cfg),
         r"cache.key_padding_mask .* \(2, 3\), got bool \(2, 2\)"),
    ]


@pytest.mark.parametrize("call,needle", _bad_calls(), ids=[n for _, n in _bad_calls()])
def test_invalid_inputs_are_value_errors_naming_the_values(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
