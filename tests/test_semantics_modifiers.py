"""The semantic profile's window and softcap columns (conformance/semantics/probes.py, contract.py): each candidate told apart by the library
probes, the in-house steps measured as the spec, SDPA and nn.MHA read as offering neither, and
the contract probes naming what a backend delivers."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.mutants.windows import SoftcapUnscaled, WindowLeftNarrow
from conformance.semantics import probes as modifiers
from conformance.semantics.contract import ALL_COLUMNS, PROBES
from conformance.semantics.libraries import SpecSteps
from conformance.semantics.probes import COLUMNS, reference


class Banded:
    """A fake library whose window covers `keys` keys, aligned `top_left` or not; softcap ignored."""

    def __init__(self, keys: int, top_left: bool = False):
        self.keys, self.top_left = keys, top_left

    def attend_modified(self, q, k, v, *, window=None, softcap=None, mask=None):
        Tq, Tk = q.shape[2], k.shape[2]
        band = modifiers._band(Tq, Tk, self.keys - 1, self.top_left) if window is not None else None
        allowed = band if mask is None else mask[:, None, None, :] if band is None else band & mask[:, None, None, :]
        return reference(q, k, v, allowed)


def test_the_columns_are_in_both_kinds_of_row():
    for key in ("window", "softcap"):
        assert key in [k for k, _ in COLUMNS] and key in [k for k, _ in ALL_COLUMNS] and key in PROBES


@pytest.mark.parametrize("keys,top_left,want", [(3, False, "w + 1 keys, bottom-right"), (2, False, "w keys, bottom-right"),
                                                (3, True, "w + 1 keys, top-left"), (8, False, "no window")])
def test_the_window_probe_reads_the_keys_covered_and_the_alignment(keys, top_left, want):
    assert modifiers.window_convention(Banded(keys, top_left))["value"] == want


def test_a_softcap_ignored_is_read_as_ignored():
    assert modifiers.softcap_position(Banded(3))["value"] == "ignored"


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_the_in_house_steps_measure_as_the_spec(name):
    if name == "torch":
        pytest.importorskip("torch")
    raw = SpecSteps(name, name)
    assert modifiers.window_convention(raw)["value"] == "w + 1 keys, bottom-right"
    assert modifiers.softcap_position(raw)["value"] == "before the mask"


def test_sdpa_and_nn_mha_offer_neither_by_their_signatures():
    pytest.importorskip("torch")
    from conformance.semantics.libraries import TorchMha, TorchSdpa

    for raw in (TorchSdpa(), TorchMha()):
        for kind in ("window", "softcap"):
            cell = getattr(modifiers, {"window": "window_convention", "softcap": "softcap_position"}[kind])(raw)
            assert cell["value"] == "not offered" and "attn_mask" in cell["detail"], (raw.name, kind, cell)


def test_the_contract_probes_name_what_a_backend_delivers():
    assert PROBES["window"](WindowLeftNarrow())[0] == "w keys"
    assert PROBES["softcap"](SoftcapUnscaled())[0] == "on unscaled scores"
    from conformance.mutants.base import PlainBackend

    assert PROBES["window"](PlainBackend())[0] == "n/a"  # not declared: not asked
