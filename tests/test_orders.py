"""The plain reference's other operation orders compute the spec, and Plain slices run by run."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.suite import orders
from conformance.suite.reference import golden_and_plain
from conformance.suite.tolerance import Plain, compare
from spec import block
from spec import steps as S
from spec.config import AttentionConfig
from spec.params import init_params


def _case(causal: bool, padding: bool, dropout: bool, T: int = 37, modifiers: bool = False):
    cfg = AttentionConfig(d_in=7, d_out=12, n_heads=3, causal=causal, qkv_bias=True,
                          dropout_p=0.25 if dropout else 0.0,
                          **(dict(window=(5, 0 if causal else 3), softcap=3.0) if modifiers else {}))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, T, 7)) * 3
    params = init_params(cfg, seed=4).map(lambda a: a * 2)
    kpm = rng.random((2, T)) > 0.4 if padding else None
    if padding:
        kpm[0, : T // 2] = False  # early causal queries of batch 0 see no key at all
    dmask = block.sample_dropout_mask((2, 3, T, T), 0.25, seed=5) if dropout else None
    return x, params, cfg, kpm, dmask


@pytest.mark.parametrize("modifiers", [False, True], ids=["plain", "window_softcap"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padding", [True, False])
@pytest.mark.parametrize("dropout", [True, False])
@pytest.mark.parametrize("order", orders.FORWARD_ORDERS, ids=lambda f: f.__name__)
def test_forward_orders_equal_the_spec_in_float64(order, causal, padding, dropout, modifiers):
    x, params, cfg, kpm, dmask = _case(causal, padding, dropout, modifiers=modifiers)
    want = block.forward(x, params, cfg, kpm, dmask)
    got = order(x, params, cfg, kpm, dmask)
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("modifiers", [False, True], ids=["plain", "window_softcap"])
@pytest.mark.parametrize("fn", list(orders.ORDERS), ids=lambda f: f.__name__)
def test_step_orders_equal_the_spec_in_float64(fn, modifiers):
    x, params, cfg, kpm, _ = _case(True, True, False, modifiers=modifiers)
    inter = block.intermediates(x, params, cfg, kpm)
    args = {S.project_qkv: (x, params), S.attn_scores: inter[6][:2], S.attn_weights: (inter[7], cfg, kpm),
            S.context: (inter[8], inter[6][2]), S.out_proj: (inter[11], params)}[fn]
    want = fn(*args)
    for alt in orders.ORDERS[fn]:
        got = alt(*args)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=alt.__name__)


def test_orders_round_differently_in_float32():
    # an order that rounds exactly like the spec adds nothing to the plain reference
    x, params, cfg, kpm, _ = _case(True, False, False, T=64)
    x32, p32 = x.astype(np.float32), params.map(lambda a: a.astype(np.float32))
    spec32 = block.forward(x32, p32, cfg, kpm)
    for order in orders.FORWARD_ORDERS:
        assert not np.array_equal(order(x32, p32, cfg, kpm), spec32), order.__name__


def test_plain_error_is_measured_on_the_compared_slice():
    golden = np.zeros((2, 3))
    # run a is worst over the whole output (row 1); run b is worst on row 0
    a = np.array([[1e-7, 0, 0], [9e-7, 0, 0]])
    b = np.array([[5e-7, 0, 0], [0, 0, 0]])
    plain = Plain((a, b))
    assert compare(np.zeros((1, 3)), golden[:1] + 1, plain[:1] + 1, "float32").plain_err == pytest.approx(5e-7)
    assert compare(np.zeros((2, 3)), golden + 1, plain + 1, "float32").plain_err == pytest.approx(9e-7)


def test_plain_arithmetic_applies_run_by_run():
    p = Plain((np.array([1.0, 2.0]), np.array([3.0, 4.0])))
    q = Plain((np.array([10.0, 20.0]), np.array([30.0, 40.0])))
    assert [r.tolist() for r in (p + q - 1.0).runs] == [[10.0, 21.0], [32.0, 43.0]]
    assert [r.tolist() for r in (1.0 - p).runs] == [[0.0, -1.0], [-2.0, -3.0]]
    assert [float(r) for r in p.sum(-1).runs] == [3.0, 7.0]


def test_golden_and_plain_spans_every_order():
    x, params, cfg, kpm, dmask = _case(True, True, False)
    x32 = x.astype(np.float32).astype(np.float64)
    golden, plain = golden_and_plain(block.forward, "float32", x32, params, cfg, kpm, dmask,
                                     orders=orders.FORWARD_ORDERS)
    assert isinstance(plain, Plain) and len(plain.runs) == 2 + len(orders.FORWARD_ORDERS)
    assert all(r.shape == golden.shape for r in plain.runs)
    _, qkv = golden_and_plain(S.project_qkv, "float32", x32, params)
    assert isinstance(qkv, tuple) and len(qkv) == 3 and len(qkv[0].runs) == 2 + len(orders.ORDERS[S.project_qkv])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_spec_and_orders_keep_the_dtype(dtype):
    # the plain reference must round like D at every step: a Python -inf once promoted
    # ml_dtypes' bfloat16 softmax to float64, making the bfloat16 reference too accurate
    from spec.config import numpy_dtype

    x, params, cfg, kpm, dmask = _case(True, True, True, T=9)
    d = numpy_dtype(dtype)
    xd, pd = x.astype(d), params.map(lambda a: a.astype(d))
    trace = block.intermediates(xd, pd, cfg, kpm, dmask)
    wrong = {k: str(v.dtype) for k, v in trace.items() if isinstance(v, np.ndarray) and v.dtype != d}
    assert not wrong, wrong
    for order in orders.FORWARD_ORDERS:
        assert order(xd, pd, cfg, kpm, dmask).dtype == d, order.__name__
    for fn, alts in orders.ORDERS.items():
        args = {S.project_qkv: (xd, pd), S.attn_scores: (trace["q"], trace["k"]),
                S.attn_weights: (trace["attn_scores"], cfg, kpm), S.context: (trace["attn_weights"], trace["v"]),
                S.out_proj: (trace["context_concat"], pd)}[fn]
        for alt in alts:
            out = alt(*args)
            for o in out if isinstance(out, tuple) else (out,):
                assert o.dtype == d, alt.__name__
