"""The semantic profile's batch- and layout-invariance columns (issue 28, items 2 and 5): each probe
tells a library or backend that keeps its bits from one that does not, and a layout that never
reached the arrays reads "not exercised", never "equal"."""

from __future__ import annotations

import numpy as np

from conformance.mutants.bitwise import BatchSplitK, PerSequence
from conformance.mutants.layouts import ReadsAsContiguous
from conformance.mutants.base import PlainBackend
from conformance.semantics import contract, invariance as iv, probes
from conformance.semantics.libraries import SpecSteps


class _Raw(iv.LaysOut):
    """A library in NumPy: softmax(q k^T / sqrt(hd)) v, optionally nudged by the batch size or compacting layouts."""

    name = "fake"

    def __init__(self, batch_variant: bool = False, compacts: bool = False):
        self.batch_variant, self.compacts = batch_variant, compacts

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        convert = (lambda a: np.ascontiguousarray(a)) if self.compacts else (lambda a: a)
        q, k, v = (self._laid(a.astype(dtype), convert) for a in (q, k, v))
        out = probes.reference(q, k, v).astype(dtype)
        return out * (1 + 4 * np.finfo(dtype).eps) if self.batch_variant and q.shape[0] > 1 else out


def test_numpy_keeps_its_bits_across_batches_and_every_layout():
    raw = SpecSteps("numpy", "numpy")
    assert iv.library_batch(raw, probes.inputs, probes._call)[0] == "equal"
    value, detail = iv.library_layouts(raw, probes.inputs, probes._call)
    assert value == "equal", detail  # all four layouts reached NumPy's arrays (strides read back)
    assert detail.count("the same bits") == 4, detail


def test_a_batch_variant_library_differs_and_a_compacting_one_is_not_exercised():
    assert iv.library_batch(_Raw(batch_variant=True), probes.inputs, probes._call)[0] == "differs (float64, float32)"
    value, detail = iv.library_layouts(_Raw(compacts=True), probes.inputs, probes._call)
    assert value == "not exercised (transposed, sliced, reversed, broadcast)", detail
    assert "from_numpy gave strides" in detail  # the strides read back, not assumed


def test_contract_batch_probe_tells_split_k_from_its_control():
    assert iv.contract_batch(PerSequence(), contract._measured)[0] == "equal"
    value, detail = iv.contract_batch(BatchSplitK(), contract._measured)
    assert value.startswith("differs ("), detail


def test_contract_layout_probe_catches_a_kernel_that_reads_as_contiguous():
    value, detail = iv.contract_layouts(PlainBackend(), contract._measured)
    assert value == "equal", detail
    value, detail = iv.contract_layouts(ReadsAsContiguous(), contract._measured)
    assert "transposed" in value and value.startswith("differs"), detail


def test_the_columns_are_in_the_profile_both_ways():
    keys = [k for k, _ in probes.COLUMNS]
    assert "batch_bitwise" in keys and "layout_bitwise" in keys
    assert "batch_bitwise" in contract.PROBES and "layout_bitwise" in contract.PROBES
