"""Memory layouts: making them, carrying them through from_numpy, reading them back, the check and its mutants."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.mutants.base import PlainBackend
from conformance.mutants.layouts import BroadcastReadFull, ReadsAsContiguous, read_as_contiguous
from conformance.suite import layouts as L
from conformance.suite.calls import Runner
from conformance.suite.checks import get
from conformance.suite.engine import Result, run_check, with_layouts
from impls.strided import copy_keeping_strides
from reports import layouts as report_layouts


def _a(shape=(2, 3, 4)):
    return np.random.default_rng(0).standard_normal(shape)


@pytest.mark.parametrize("layout", ["contiguous", *L.LAYOUTS])
def test_lay_out_keeps_values_and_makes_its_strides(layout):
    a = L.broadcastable(_a(), 0) if layout == "broadcast" else _a()
    v = L.lay_out(a, layout)
    assert np.array_equal(v, a)
    s = L.element_strides(v)
    expected = {"contiguous": (12, 4, 1), "transposed": (12, 1, 3), "sliced": (27, 9, 2),
                "reversed": (12, -4, 1), "broadcast": (0, 4, 1)}[layout]
    assert s == expected


def test_broadcast_refuses_values_that_differ():
    with pytest.raises(ValueError, match="values differ along axis 0"):
        L.lay_out(_a(), "broadcast")


@pytest.mark.parametrize("layout", L.LAYOUTS)
def test_copy_keeping_strides_keeps_each_layout_and_owns_its_buffer(layout):
    a = L.broadcastable(_a(), 0) if layout == "broadcast" else _a()
    v = L.lay_out(a, layout)
    c = copy_keeping_strides(v, np.float32)
    assert c.dtype == np.float32 and np.array_equal(c, a.astype(np.float32))
    assert L.element_strides(c) == L.element_strides(v)
    assert not np.shares_memory(c, v)


def test_copy_keeping_strides_without_negative_strides_compacts_them():
    v = L.lay_out(_a(), "reversed")
    c = copy_keeping_strides(v, negative=False)
    assert c.flags.c_contiguous and np.array_equal(c, v)


def test_reached_reads_strides_back_and_says_why_not():
    v = L.lay_out(_a(), "transposed")
    assert L.reached(v, v.copy(order="K")) is None
    assert "from_numpy gave strides (12, 4, 1)" in L.reached(v, np.ascontiguousarray(v))
    assert "exposes no strides" in L.reached(v, [1.0])  # an array type without strides (as JAX's)
    one = L.lay_out(_a((2, 1, 3)), "transposed")  # a length-1 axis: nothing to lay out
    assert "the layout is contiguous" in L.reached(one, one)


def test_torch_keeps_positive_strides_and_cannot_hold_negative_ones():
    pytest.importorskip("torch")
    from impls.torch_backend import TorchBackend

    b = TorchBackend()
    for layout in ("transposed", "sliced", "broadcast"):
        a = L.broadcastable(_a(), 0) if layout == "broadcast" else _a()
        v = L.lay_out(a.astype(np.float32), layout)
        assert L.reached(v, b.from_numpy(v, "float32")) is None, layout
    v = L.lay_out(_a().astype(np.float32), "reversed")
    t = b.from_numpy(v, "float32")
    assert "from_numpy gave strides" in L.reached(v, t) and np.array_equal(t.numpy(), v)


def test_runner_lays_out_by_role_and_notes_what_reached():
    run = Runner(PlainBackend(), "float32")
    x = _a()
    with run.laid_out({"x": "sliced"}):
        native = run.native(x, "x")
        other = run.native(x, "grad_out")  # not in the plan: contiguous
    assert L.element_strides(native) == (27, 9, 2) and other.flags.c_contiguous
    assert run.layouts_seen == {"x sliced": None}
    assert run.native(x, "x").flags.c_contiguous  # the plan ends with the block


def test_a_pass_where_no_layout_reached_is_not_a_pass():
    run = Runner(PlainBackend(), "float32")
    run.layouts_seen = {"x reversed": "from_numpy gave strides (12, 4, 1), the layout's are (12, -4, 1)"}
    r = with_layouts(Result("passed", "30 examples"), run)
    assert r.outcome == "unsupported" and "no layout reached" in r.reason
    assert r.layouts == {"x reversed": "not exercised: from_numpy gave strides (12, 4, 1), the layout's are (12, -4, 1)"}


def test_read_as_contiguous_reads_memory_order():
    a = _a()
    assert read_as_contiguous(a) is a
    t = L.lay_out(a, "transposed")
    assert np.array_equal(read_as_contiguous(t), np.ascontiguousarray(a.swapaxes(-1, -2)).reshape(a.shape))
    b = L.lay_out(L.broadcastable(a, 0), "broadcast")
    got = read_as_contiguous(copy_keeping_strides(b))
    assert np.array_equal(got[0], a[0]) and not np.array_equal(got[1], a[0])  # past the stored row: garbage


@pytest.mark.parametrize("mutant", [ReadsAsContiguous, BroadcastReadFull])
def test_layout_check_kills_the_layout_mutants_and_passes_the_control(mutant):
    check = get("layouts_match_contiguous")
    assert run_check(check, PlainBackend(), "float32", seed=1).outcome == "passed"
    r = run_check(check, mutant(), "float32", seed=1)
    assert r.outcome == "failed" and "laid out vs contiguous" in r.reason


def test_record_lists_layouts_and_report_shows_not_exercised():
    r = run_check(get("layouts_match_contiguous"), PlainBackend(), "float32", seed=1)
    assert r.layouts and set(r.layouts.values()) <= {"exercised"} | {v for v in r.layouts.values()
                                                                     if v.startswith("not exercised: ")}
    run = {"conformance": {"records": [
        {"backend": "plain", "dtype": "float32", "check": "layouts_match_contiguous", "outcome": "passed",
         "layouts": {**r.layouts, "x reversed": "not exercised: from_numpy gave strides (1, 2), the layout's are (-1, 2)"}}]}}
    rows = report_layouts.rows([run])
    assert rows[0][:3] == ["plain", "float32", "passed"]
    assert "not exercised: x" in rows[0][3 + report_layouts.LAYOUTS.index("reversed")]
    md = "\n".join(report_layouts.markdown([run], str, str))
    assert "## Memory layouts" in md and "reversed: from_numpy did not keep the strides (plain)" in md
