"""KV-cache decoding in the backends and the suite: the contract, the backends' prefill/decode
against the spec, the cache checks failing the cache mutants (and passing their correct
control), and a top-left-aligned decoder failing with a message that names the alignment. The
correct backends pass the cache checks in tests/test_suite.py's default run of the catalogue."""

from __future__ import annotations

import numpy as np
import pytest

import spec
from conformance.mutants.base import PlainBackend
from conformance.mutants.cache import CACHE_MUTANTS, CacheTopLeft
from conformance.suite import profiles
from conformance.suite.cache_reference import DECODE_ORDERS, decoded, decoded_top_left
from conformance.suite.checks import catalogue, get
from conformance.suite.engine import run_check
from conformance.speed.worker import decode_line_steps
from impls.base import Capabilities
from impls.registry import resolve
from tests.test_backends import numpy_as_cupy  # noqa: F401  (the fixture: a NumPy stand-in for cupy)

CACHE_CHECKS = [c for c in catalogue() if c.fn.__module__ == "conformance.suite.checks.cache"]
DECODERS = ("numpy", "torch", "torch-sdpa")


@pytest.fixture(autouse=True)
def quick_profile():
    profiles.load("quick")  # tests/conftest.py puts the previous profile back after each test


def _case(seed: int, causal: bool = True, T: int = 9):
    rng = np.random.default_rng(seed)
    cfg = spec.AttentionConfig(d_in=5, d_out=6, n_heads=2, causal=causal, qkv_bias=bool(seed % 2))
    return cfg, spec.init_params(cfg, seed), rng.standard_normal((2, T, 5)), rng.random((2, T)) > 0.3


def _decode(be, cfg, params, x, kpm, t, chunks, dtype="float64"):
    w = be.prepare(params, dtype)
    part = (lambda a, b: None) if kpm is None else (lambda a, b: be.from_numpy(kpm[:, a:b]))
    cache = be.prefill(be.from_numpy(x[:, :t], dtype), w, cfg, key_padding_mask=part(0, t))
    ys, a = [], t
    for n in chunks:
        y, cache = be.decode(be.from_numpy(x[:, a:a + n], dtype), cache, w, cfg, key_padding_mask=part(a, a + n))
        ys.append(be.to_numpy(y))
        a += n
    return np.concatenate(ys, axis=1), cache


def test_capabilities_declare_the_cache_and_refuse_arrays_without_it():
    assert Capabilities().kv_cache is False and Capabilities().cache_arrays is False
    with pytest.raises(ValueError, match="cache_arrays=True needs kv_cache=True"):
        Capabilities(cache_arrays=True)
    for name in DECODERS:
        caps = resolve(name).backend.capabilities
        assert caps.kv_cache and caps.cache_arrays, name
    assert not resolve("torch-mha").backend.capabilities.kv_cache  # declares no cache


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("causal", [True, False])
def test_backends_decode_as_the_spec_for_every_prefill_and_chunking(name, causal):
    info = resolve(name)
    if info.skip_reason:
        pytest.skip(info.skip_reason)
    be = info.backend
    cfg, params, x, kpm = _case(3, causal)
    for t, chunks in ((1, [1] * 8), (4, [1] * 5), (2, [3, 1, 3]), (8, [1]), (5, [4])):
        for m in (None, kpm):
            got, cache = _decode(be, cfg, params, x, m, t, chunks)
            want = decoded(x, params, cfg, m, t, tuple(chunks))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{name} t={t} {chunks}")
            k, v = (be.to_numpy(a) for a in be.cache_kv(cache))
            _, k_spec, v_spec = spec.qkv_heads(x, params, cfg)
            np.testing.assert_allclose(k, k_spec, atol=1e-12)
            np.testing.assert_allclose(v, v_spec, atol=1e-12)


def test_decode_orders_equal_the_spec_in_float64():
    cfg, params, x, kpm = _case(4)
    want = decoded(x, params, cfg, kpm, 3, (2, 1, 3))
    for order in DECODE_ORDERS:
        np.testing.assert_allclose(order(x, params, cfg, kpm, 3, (2, 1, 3)), want, atol=1e-12, err_msg=order.__name__)
    # the top-left answer differs wherever a new token has more than its own index of keys
    assert np.abs(decoded_top_left(x, params, cfg, None, 3, (2, 1, 3)) - decoded(x, params, cfg, None, 3, (2, 1, 3))).max() > 1e-3


def test_sdpa_is_causal_aligns_top_left_which_is_why_the_backend_does_not_use_it():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = torch.randn(1, 1, 2, 4, dtype=torch.float64), *torch.randn(2, 1, 1, 5, 4, dtype=torch.float64)
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    lower_right = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(2, 5))
    explicit = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(2, 5, dtype=torch.bool).tril(3))
    assert torch.allclose(lower_right, explicit) and not torch.allclose(top_left, explicit)


def test_cupy_decodes_through_the_shared_array_code(numpy_as_cupy):
    be = numpy_as_cupy
    cfg, params, x, kpm = _case(5)
    got, cache = _decode(be, cfg, params, x, kpm, 2, [1, 3, 1, 2])
    np.testing.assert_allclose(got, decoded(x, params, cfg, kpm, 2, (1, 3, 1, 2)), atol=1e-12)
    assert be.cache_kv(cache)[0].shape == (2, 2, 9, 3)
    assert be.capabilities.kv_cache and be.capabilities.cache_arrays


def test_cache_checks_need_the_declared_cache():
    for check in CACHE_CHECKS:
        reason = check.unsupported(resolve("torch-mha").backend, "float32")
        assert "Capabilities.kv_cache" in reason or check.name == "steps_with_fewer_queries"
    assert "steps 7 to 9 not exposed" in get("steps_with_fewer_queries").unsupported(resolve("torch-mha").backend, "float32")
    assert "key padding" in get("decode_with_padding").unsupported(_NoPadding(), "float32")


class _NoPadding(PlainBackend):
    capabilities = Capabilities(dtypes=("float32",), kv_cache=True)


def test_the_long_cache_check_reaches_4096_tokens():
    case = get("decode_long_cache").explicit_cases(PlainBackend(), "float32")[0]
    assert case.T == 4096 and case.extra["prefill"] == 4095


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mutant", [PlainBackend, *CACHE_MUTANTS], ids=lambda m: m.name)
def test_cache_checks_kill_each_cache_mutant_and_pass_the_control(mutant, dtype):
    outcomes = {}
    for c in CACHE_CHECKS:  # in catalogue order, up to the first failure (as the kill table runs)
        outcomes[c.name] = run_check(c, mutant(), dtype, seed=2)
        if outcomes[c.name].outcome == "failed":
            break
    failed = {n: r.reason for n, r in outcomes.items() if r.outcome == "failed"}
    if mutant is PlainBackend:
        assert not failed and all(r.outcome == "passed" for r in outcomes.values()), failed
    else:
        assert failed, f"{mutant.name} survived the cache checks"
    # the forward alone never sees these bugs
    assert run_check(get("matches_spec"), mutant(), dtype, seed=2).outcome == "passed"


@pytest.mark.parametrize("check", ["decode_token_by_token", "steps_with_fewer_queries"])
def test_a_top_left_decoder_fails_with_a_message_naming_the_alignment(check):
    r = run_check(get(check), CacheTopLeft(), "float32", seed=1)
    assert r.outcome == "failed"
    assert "aligned top-left" in r.reason and "bottom-right" in r.reason, r.reason


# -- decode speed: `python -m conformance.speed --decode` ------------------------------------------
def test_decode_bench_quick_writes_its_figures_beside_the_forward_and_the_report_shows_them(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from conformance.results import load, update_section
    from reports import html, markdown
    from reports.model import build

    forward = {"status": "complete", "started": "2026-11-30T00:00:00", "command": "earlier forward run",
               "peak": {}, "cells": []}
    update_section(tmp_path / "results.json", "here", None, "speed", forward)
    proc = subprocess.run([sys.executable, "-m", "conformance.speed", "--decode", "--quick", "--backend", "numpy",
                           "--backend", "torch-mha", "--machine", "here", "--out", str(tmp_path)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    speed = load(tmp_path)["runs"][0]["speed"]  # validated against the schema
    assert speed["command"] == "earlier forward run"  # the forward's section is kept
    dec = speed["decode"]
    assert dec["bandwidth"]["gb_per_s"] > 0
    assert {(c["B"], c["L"]) for c in dec["cells"]} == {(B, L) for B in (1, 8) for L in (128, 1024, 8192)}
    for c in dec["cells"]:
        assert c["backend"] == "numpy" and c["error"] is None
        line = decode_line_steps(c["L"])  # a line of steps from L reads L + 1 + (line - 1) / 2 tokens on average
        assert c["kv_bytes"] == 2 * c["B"] * 512 * (c["L"] + 1 + (line - 1) / 2) * 4  # d_out = 512, float32
        assert c["gb_per_s"] == pytest.approx(c["kv_bytes"] / c["median_s"] / 1e9)
        assert c["bandwidth_fraction"] == pytest.approx(c["gb_per_s"] / dec["bandwidth"]["gb_per_s"])
    assert dec["skipped"] == [{"backend": "torch-mha", "reason": "KV-cache decoding not declared (Capabilities.kv_cache)"}]
    report = build(load(tmp_path))
    md = markdown.render(report)
    assert "decode, float32" in html.render(report)
    assert "### here: decode, float32" in md and "% of copy bandwidth" in md and "B=8 L=8192" in md
    assert [(f["backend"], f["B"], f["lengths"]) for f in dec["fits"]] == [("numpy", 1, [128, 1024, 8192]),
                                                                         ("numpy", 8, [128, 1024, 8192])]
    assert "time = t0 + bytes / bandwidth" in md and "- numpy B=8: t0 " in md


def test_a_decode_writing_into_its_input_cache_passes_single_use_and_fails_branching():
    from conformance.mutants.cache import CacheWrittenInPlace

    for check in ("decode_token_by_token", "decode_in_chunks", "cache_holds_spec_kv"):
        assert run_check(get(check), CacheWrittenInPlace(), "float32", seed=1).outcome == "passed", check
    r = run_check(get("decode_branches_from_one_cache"), CacheWrittenInPlace(), "float32", seed=1)
    assert r.outcome == "failed" and "branch A" in r.reason and "from the same cache" in r.reason, r.reason


def _decoder(name: str, request):
    """A built-in backend with a cache, or "cupy": its array code on a NumPy stand-in (no GPU here)."""
    if name == "cupy":
        return request.getfixturevalue("numpy_as_cupy")
    info = resolve(name)
    if info.skip_reason:
        pytest.skip(info.skip_reason)
    return info.backend


@pytest.mark.parametrize("name", (*DECODERS, "cupy"))
def test_two_continuations_from_one_cache_each_decode_as_the_spec(name, request):
    """The built-in caches append in place (impls.array_cache.InPlaceCache): a cache given to
    decode must stay what it was, so a second continuation from it copies instead of writing
    over the first's tokens; a line of single steps within the storage never copies."""
    be = _decoder(name, request)
    cfg, params, x, kpm = _case(5, T=12)
    _, _, x_b, _ = _case(6, T=12)  # branch B's tokens differ from A's after the prompt
    x_b = np.concatenate([x[:, :4], x_b[:, 4:]], axis=1)  # (2, 12, 5): A's prompt, B's own tokens
    w = be.prepare(params, "float64")
    prompt = be.prefill(be.from_numpy(x[:, :4], "float64"), w, cfg, key_padding_mask=be.from_numpy(kpm[:, :4]))
    k0, v0 = (be.to_numpy(a).copy() for a in be.cache_kv(prompt))

    def line(xs, cache, a, b):  # one token at a time from position a to b
        ys = []
        for i in range(a, b):
            y, cache = be.decode(be.from_numpy(xs[:, i:i + 1], "float64"), cache, w, cfg,
                                 key_padding_mask=be.from_numpy(kpm[:, i:i + 1]))
            ys.append(be.to_numpy(y))
        return np.concatenate(ys, axis=1), cache

    ya1, ca = line(x, prompt, 4, 6)  # A's first two tokens, written in place after the prompt
    yb1, cb = line(x_b, prompt, 4, 6)  # B from the same prompt cache: must not overwrite A's
    ya2, ca = line(x, ca, 6, 12)
    yb2, cb = line(x_b, cb, 6, 12)
    for xs, got in ((x, np.concatenate([ya1, ya2], axis=1)), (x_b, np.concatenate([yb1, yb2], axis=1))):
        np.testing.assert_allclose(got, decoded(xs, params, cfg, kpm, 4, (1,) * 8), rtol=0, atol=1e-12)
    k, v = (be.to_numpy(a) for a in be.cache_kv(prompt))
    assert np.array_equal(k, k0) and np.array_equal(v, v0), f"{name}: the prompt's cache changed"
    assert ca.store is not None and ca.store is not cb.store  # B branched off into storage of its own
    x1 = be.from_numpy(x[:, :1], "float64")
    first = be.decode(x1, ca, w, cfg)[1]
    again = be.decode(x1, first, w, cfg)[1]
    assert again.store is first.store and again.k.shape[2] == first.k.shape[2] + 1  # in place, no copy


@pytest.mark.parametrize("name, minor", [("numpy", True), ("torch", True), ("torch-sdpa", False), ("cupy", False)])
def test_the_cache_layout_follows_token_minor_and_decodes_alike_either_way(name, minor, request):
    """numpy and torch keep K and V token-minor, (B, Hkv, hd, capacity) behind (B, Hkv, t, hd) views,
    for faster decode reads; SDPA wants token-major rows. Either layout decodes the same tokens."""
    be = _decoder(name, request)
    assert be.token_minor is minor
    cfg, params, x, kpm = _case(7, T=9)
    w = be.prepare(params, "float64")
    outs = []
    for flag in (minor, not minor):
        be.token_minor = flag
        try:
            cache = be.prefill(be.from_numpy(x[:, :5], "float64"), w, cfg, key_padding_mask=be.from_numpy(kpm[:, :5]))
            ys = []
            for i in range(5, 9):
                y, cache = be.decode(be.from_numpy(x[:, i:i + 1], "float64"), cache, w, cfg,
                                     key_padding_mask=be.from_numpy(kpm[:, i:i + 1]))
                ys.append(be.to_numpy(y))
        finally:
            del be.token_minor  # back to the class's own
        k = be.to_numpy(be.cache_kv(cache)[0])
        assert k.shape[2] == 9
        along_tokens, along_hd = cache.k.stride()[2:] if hasattr(cache.k, "stride") and callable(cache.k.stride) \
            else (s // cache.k.itemsize for s in cache.k.strides[2:])
        assert (along_tokens == 1) is flag and (along_hd == 1) is (not flag), (name, flag, along_tokens, along_hd)
        outs.append(np.concatenate(ys, axis=1))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(outs[0], decoded(x, params, cfg, kpm, 5, (1,) * 4), rtol=0, atol=1e-12)
