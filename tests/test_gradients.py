"""Gradients: the backends' backwards against the spec, the contract's edges, the reference, the mutants.

The spec's own backward is tested in tests/test_backward.py (finite differences, torch float64
autograd); here every backend declaring gradients is held to it in float64, and the suite's
parts that judge gradients (Runner.grads, the plain reference's orders, the localisation of a
wrong VJP, the backward mutants) are checked on fixed cases.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conformance.mutants.backward import BACKWARD_MUTANTS, BACKWARD_SIZE_MUTANTS, NoRowTerm, NoScaleInDK
from conformance.mutants.base import PlainBackend
from conformance.suite.calls import Runner
from conformance.suite.checks import CheckFailure, catalogue
from conformance.suite.checks.localize_backward import first_wrong_vjp
from conformance.suite.grad_reference import ORDERS, grads_flash, sizes, spec_order
from conformance.suite.strategies import case_from
from impls.base import exposed_vjps
from impls.registry import resolve
from spec.block import grads as spec_grads
from spec.block import sample_dropout_mask
from spec.config import AttentionConfig
from tests.test_backends import numpy_as_cupy  # noqa: F401  (the NumPy stand-in for cupy, a fixture)

CPU_GRAD_BACKENDS = ("numpy", "torch", "torch-sdpa", "torch-mha")


def _case(causal=True, qkv_bias=True, d_in=8, d_out=8, H=2, B=2, T=7, dtype="float64", padding=True):
    case = case_from(AttentionConfig(d_in=d_in, d_out=d_out, n_heads=H, causal=causal, qkv_bias=qkv_bias),
                     B, T, dtype, seed=5)
    if padding:
        kpm = np.ones((B, T), dtype=bool)
        kpm[0, :3] = False  # early causal queries of batch 0 see nothing
        kpm[1, 4] = False
        case = case.with_(key_padding_mask=kpm)
    return case


def _grad_out(case):
    return np.random.default_rng(7).standard_normal((case.B, case.T, case.config.d_out))


def _assert_matches_spec(backend, case, training=False, rtol=1e-10):
    g = _grad_out(case)
    got = Runner(backend, case.dtype).grads(case, g, training=training)
    want = spec_grads(case.x, case.params, case.config, g, case.key_padding_mask,
                      case.dropout_mask if training else None).arrays()
    assert set(got) - {"out"} == set(want)
    for name, w in want.items():
        scale = max(float(np.max(np.abs(w), initial=0.0)), 1.0)
        np.testing.assert_allclose(got[name], w, rtol=0, atol=rtol * scale, err_msg=f"{backend.name} {name}")
        assert np.isfinite(got[name]).all()


@pytest.mark.parametrize("name", CPU_GRAD_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_backend_gradients_match_the_spec_in_float64(name, causal, qkv_bias):
    backend = resolve(name).backend
    assert backend.capabilities.gradients
    _assert_matches_spec(backend, _case(causal=causal, qkv_bias=qkv_bias))


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_dropout_is_replayed_in_backward(name):
    case = _case()
    config = replace(case.config, dropout_p=0.4)
    case = case.with_(config=config, dropout_mask=sample_dropout_mask((case.B, 2, case.T, case.T), 0.4, seed=3))
    _assert_matches_spec(resolve(name).backend, case, training=True)


def test_numpy_own_dropout_is_kept_for_backward():
    backend = resolve("numpy").backend
    case = _case()
    config = replace(case.config, dropout_p=0.5)
    w = backend.prepare(case.params, "float64")
    out, saved = backend.forward_for_grad(case.x, w, config, key_padding_mask=case.key_padding_mask, training=True)
    g = _grad_out(case)
    got = backend.backward(saved, g)
    want = spec_grads(case.x, case.params, config, g, case.key_padding_mask, saved["keep"]).arrays()
    for name, a in want.items():
        np.testing.assert_allclose(got[name], a, rtol=0, atol=1e-10 * max(1.0, np.abs(a).max()), err_msg=name)


def test_numpy_blocked_backward_at_long_sequences():
    # past _BUDGET the blocks go one (batch, head) at a time, and causal skips key blocks
    case = _case(T=300, B=1, H=2, d_in=4, d_out=4, padding=False)
    _assert_matches_spec(resolve("numpy").backend, case)


def test_cupy_gradients_on_a_numpy_stand_in(numpy_as_cupy):  # noqa: F811
    _assert_matches_spec(numpy_as_cupy, _case())
    assert exposed_vjps(numpy_as_cupy) == tuple(range(4, 13))


def test_torch_mha_maps_packed_gradients_back():
    got = Runner(resolve("torch-mha").backend, "float64").grads(_case(qkv_bias=False), _grad_out(_case()))
    assert "db_q" not in got and got["dW_q"].shape == (8, 8)


class _Transposed(PlainBackend):
    name = "test-transposed"

    def backward(self, saved, grad_out):
        g = super().backward(saved, grad_out)
        return {**g, "dW_q": g["dW_q"].T}


class _Missing(PlainBackend):
    name = "test-missing"

    def backward(self, saved, grad_out):
        g = super().backward(saved, grad_out)
        g.pop("db_k")
        return g


def test_runner_grads_names_a_wrong_shape_and_a_missing_gradient():
    case = _case(d_in=5)
    with pytest.raises(CheckFailure, match=r"backward dW_q: returned shape \(5, 8\), expected \(8, 5\)"):
        Runner(_Transposed(), "float64").grads(case, _grad_out(case))
    with pytest.raises(CheckFailure, match="returned gradients .* expected .*db_k"):
        Runner(_Missing(), "float64").grads(case, _grad_out(case))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_flash_orders_equal_the_spec_and_sizes_bound_the_golden(dtype):
    case = _case(dtype=dtype)
    args = (case.x, case.params, case.config, _grad_out(case), case.key_padding_mask, None)
    want = spec_order(*args)
    tol = 1e-12 if dtype == "float64" else 1e-4
    for order in (grads_flash, *ORDERS):
        for a, w in zip(order(*args), want):
            np.testing.assert_allclose(a, w, rtol=0, atol=tol * max(1.0, np.abs(w).max()), err_msg=order.__name__)
    size = sizes(case, args[3])
    for name, w in zip(("dx", "dW_q", "dW_k", "dW_v", "dW_o", "db_o", "db_q", "db_k", "db_v"), want):
        assert size[name] >= np.abs(w).max() * (1 - 1e-12), name
    assert np.abs(want[-2]).max() < 1e-12 * size["db_k"]  # db_k: zero in exact arithmetic, not in its terms


def test_gradient_checks_are_their_own_group():
    groups = {c.name: c.group for c in catalogue()}
    grads = [n for n, g in groups.items() if g == "gradients"]
    assert len(grads) == 8 and all(n.startswith("grads_") for n in grads)
    assert groups["matches_spec"] == "forward"


@pytest.mark.parametrize("mutant", BACKWARD_MUTANTS, ids=[m.name for m in BACKWARD_MUTANTS])
def test_backward_mutant_forward_is_right_and_its_gradients_wrong(mutant):
    case = _case(d_in=6, d_out=8, B=2)
    config = replace(case.config, dropout_p=0.3)
    case = case.with_(config=config, dropout_mask=sample_dropout_mask((2, 2, case.T, case.T), 0.3, seed=1))
    g = _grad_out(case)
    ok, bad = PlainBackend(), mutant()
    w = ok.prepare(case.params, "float64")
    np.testing.assert_array_equal(bad.forward(case.x, w, config), ok.forward(case.x, w, config))

    def grads(b, n=1):
        for _ in range(n):
            out = b.backward(b.forward_for_grad(case.x, w, config, key_padding_mask=case.key_padding_mask,
                                                dropout_mask=case.dropout_mask, training=True)[1], g)
        return out

    want, got = grads(ok), grads(bad, n=2)  # twice: state kept across calls shows on the second
    assert any(got[k].shape != want[k].shape or not np.allclose(got[k], want[k], rtol=1e-6, atol=1e-9)
               for k in want), mutant.name


@pytest.mark.parametrize("mutant, step", [(NoRowTerm, 8), (NoScaleInDK, 7)])
def test_first_wrong_vjp_names_the_step(mutant, step):
    case = _case(dtype="float32")
    msg = first_wrong_vjp(Runner(mutant(), "float32"), case, _grad_out(case))
    assert msg.startswith(f"first wrong step of the backward: {step} "), msg
    ok = first_wrong_vjp(Runner(PlainBackend(), "float32"), case, _grad_out(case))
    assert ok.startswith("every exposed VJP"), ok


def test_report_groups_gradient_checks_and_shows_fwd_bwd_next_to_the_forward():
    from reports.markdown import speed_cells, speed_head
    from reports.model import GRADIENTS, _check_rows
    from reports.speed_model import SpeedTable, _row

    checks = [{"name": "matches_spec", "step": None, "doc": "d", "group": "forward"},
              {"name": "grads_match_spec", "step": None, "doc": "d", "group": "gradients"}]
    groups = _check_rows([{"conformance": {"checks": checks, "records": []}}])
    assert [(title, [r.name for r in rows]) for title, rows in groups] == \
        [("end to end", ["matches_spec"]), (GRADIENTS, ["grads_match_spec"])]
    cell = {"backend": "numpy", "device": "cpu", "dtype": "float32", "B": 4, "T": 512, "d_in": 512, "d_out": 512,
            "n_heads": 8, "causal": True, "median_s": 0.1, "p25_s": 0.09, "p75_s": 0.11, "first_call_s": 0.2,
            "samples_s": [0.1] * 8, "flops": 1e10, "gflops": 100.0, "conforming": True,
            "fwd_bwd_median_s": 0.3, "fwd_bwd_gflops": 100.0}
    row = _row(cell, None, None)
    table = SpeedTable("m", "cpu", "float32", None, "", None, [], [], [row])
    head, cells = speed_head(table), speed_cells(row, table)
    assert head[3:6] == ["GFLOP/s", "Fwd+bwd ms", "Fwd+bwd GFLOP/s"] and cells[4:6] == ["300", "100"]


def test_fwd_bwd_timing_and_flops():
    from conformance.speed.backward import fwd_bwd_flops
    from conformance.speed.flops import useful_flops

    assert fwd_bwd_flops(2, 64, 32, 32, 4, True) == 3 * useful_flops(2, 64, 32, 32, 4, True)
    from conformance.speed.cells import LocalUnit, time_cell

    calls = []
    be = resolve("numpy").backend
    backward = be.backward
    be.backward = lambda saved, g: calls.append(1) or backward(saved, g)  # counts what is timed
    (t,) = time_cell([LocalUnit(be)], (2, 64, 32, 32, 4), "float32", True, 0, budget_s=0.01, min_samples=3,
                     memory=False, op="prepare_fwd_bwd")
    assert t.error is None and len(t.samples) >= 3 and all(s > 0 for s in t.samples)
    assert len(calls) >= len(t.samples)  # each timed sample ran a backward


# -- the size classes' edges within the gradient budget (issue #28, item 6) -------------------------
class _Declares:
    def __init__(self, dtype: str):
        from impls.base import Capabilities

        self.capabilities = Capabilities(dtypes=(dtype,), gradients=True)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_grads_match_spec_runs_fixed_examples_past_head_dim_64_and_t_256_at_every_dtype(dtype):
    from conformance.suite import profiles
    from conformance.suite import sizes as sz
    from conformance.suite.checks import get
    from conformance.suite.checks.gradients import GRAD_BUDGET_SCALE

    profiles.load("default")
    cases = get("grads_match_spec").explicit_cases(_Declares(dtype), dtype)
    shapes = [sz.Sizes(c.B, c.T, c.config.d_in, c.config.n_heads, c.config.head_dim) for c in cases]
    budget = profiles.LARGE_BUDGET_S["default"] * GRAD_BUDGET_SCALE
    assert all(sz.affordable(dtype, s, budget) for s in shapes)
    assert all("grad_seed" in c.extra for c in cases)
    for name in ("H>8", "head_dim>64", "d_in>64, not a multiple of 64", "B*H>32"):
        assert sum(sz.SIZE_CLASSES[name](s) for s in shapes) >= 1, name
    long = sorted(s.T for s in shapes if s.T > 256)
    assert long[0] == 257 and long[-1] > 400  # one past a 256-row tile, and the longest that fits


_GRAD_PAST = {"mutant-bwd-head-dim-tail": dict(head_dim=72), "mutant-bwd-query-tile-dropped": dict(T=300)}


@pytest.mark.parametrize("mutant", BACKWARD_SIZE_MUTANTS, ids=[m.name for m in BACKWARD_SIZE_MUTANTS])
def test_backward_size_mutants_are_right_at_the_old_sizes_and_wrong_past_their_threshold(mutant):
    def grads(cls, B=3, T=129, d_in=24, H=4, head_dim=8):  # the old strategies' largest
        case = case_from(AttentionConfig(d_in=d_in, d_out=H * head_dim, n_heads=H), B, T, "float64", seed=3)
        return Runner(cls(), "float64").grads(case, _grad_out(case))

    ok, bad = grads(PlainBackend), grads(mutant)
    assert all(np.array_equal(ok[k], bad[k]) for k in ok)
    past = _GRAD_PAST[mutant.name]
    ok, bad = grads(PlainBackend, **past), grads(mutant, **past)
    assert np.array_equal(ok["out"], bad["out"])  # the forward is right
    assert not np.allclose(ok["dW_v"], bad["dW_v"], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mutant", BACKWARD_SIZE_MUTANTS, ids=[m.name for m in BACKWARD_SIZE_MUTANTS])
def test_grads_match_spec_kills_the_backward_size_mutants_with_its_fixed_examples(mutant, dtype):
    from conformance.suite import profiles
    from conformance.suite.checks import get
    from conformance.suite.engine import run_check

    # the kill table's profile: its budget puts T near 411 in float16 (quick's 0.1 s stops near
    # 270, where one dropped query row of 257 or 270 is within float16's tolerance)
    profiles.load("mutants")
    r = run_check(get("grads_match_spec"), mutant(), dtype, seed=1)
    assert r.outcome == "failed" and "dW_v" in r.reason, r.reason
