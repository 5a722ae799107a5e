"""The semantic profile's grouped K/V heads column: the library probe (consecutive or interleaved
groups, the groups accepted, or why a library cannot take fewer K/V heads) and the contract probe
(what a backend declaring grouped_kv delivers through its forward)."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.mutants.grouped import GroupInterleaved, GroupOnlyAtTheEnds
from conformance.semantics import contract, probes
from conformance.semantics import rows as sem_rows
from conformance.semantics.libraries import SpecSteps, TorchMha, TorchSdpa, _no_kv_heads_argument
from impls.registry import resolve

SPEC_GROUPING = "consecutive; groups 2, 3, 4, multi-query"


class Mapped:
    """A stand-in library whose query head h reads K/V head `heads(H, Hkv)[h]`; refuses what it cannot split."""

    def __init__(self, heads):
        self.heads = heads

    def attend_grouped(self, q, k, v):
        H, Hkv = q.shape[1], k.shape[1]
        if H % Hkv:
            raise ValueError(f"{Hkv} K/V heads do not divide {H} query heads")
        return probes.grouped_reference(q, k, v, self.heads(H, Hkv))


def test_the_column_is_in_both_kinds_of_row():
    assert ("kv_grouping", "grouped K/V heads") in probes.COLUMNS
    assert "kv_grouping" in contract.PROBES and "kv_grouping" in [k for k, _ in contract.ALL_COLUMNS]


def test_the_library_probe_tells_consecutive_from_interleaved_and_lists_the_groups():
    consecutive = probes.kv_grouping(Mapped(lambda H, Hkv: np.arange(H) // (H // Hkv)))
    assert consecutive["value"] == SPEC_GROUPING
    assert "6 over 4 (no whole groups): refused (ValueError" in consecutive["detail"]
    assert probes.kv_grouping(Mapped(lambda H, Hkv: np.arange(H) % Hkv))["value"] == \
        "interleaved; groups 2, 3, 4, multi-query"
    # a library right at 4 over 2 but wrong at groups of 3 and 4: only the groups it got right are listed
    only_two = probes.kv_grouping(Mapped(lambda H, Hkv: np.arange(H) // 2 % Hkv))
    assert only_two["value"] == "consecutive; groups 2, multi-query"
    assert "6 over 3: as the mapping" in only_two["detail"] and "6 over 2: a different output" in only_two["detail"]


def test_the_library_probe_reports_a_refusal_and_a_library_that_cannot():
    class Refuses:
        def attend_grouped(self, q, k, v):
            raise RuntimeError("shape mismatch")

    class Cannot:
        def cannot_group(self):
            return "no argument for it"

    assert probes.kv_grouping(Refuses()) == probes.entry("raises", "4 query heads over 2 K/V heads: "
                                                                   "RuntimeError: shape mismatch")
    assert probes.kv_grouping(Cannot()) == probes.entry("cannot", "no argument for it")


def test_a_constructor_with_a_kv_heads_argument_can_group():
    class WithKv:
        def __init__(self, num_heads, num_kv_heads): ...

    class Without:
        def __init__(self, num_heads, kdim): ...

    assert _no_kv_heads_argument(WithKv, "WithKv", "why") is None
    assert _no_kv_heads_argument(Without, "Without", "why") == \
        "Without has no argument for fewer K/V heads (why); its arguments: num_heads, kdim"


def test_numpy_steps_group_consecutively():
    assert probes.kv_grouping(SpecSteps("numpy", "numpy"))["value"] == SPEC_GROUPING


def test_torch_sdpa_enable_gqa_groups_consecutively_and_nn_mha_cannot():
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    sdpa = probes.kv_grouping(TorchSdpa())
    assert sdpa["value"] == SPEC_GROUPING and "6 over 4 (no whole groups): refused" in sdpa["detail"]
    mha = probes.kv_grouping(TorchMha())
    assert mha["value"] == "cannot" and "kdim" in mha["detail"] and "num_heads" in mha["detail"]


def test_the_contract_probe_names_the_mapping_a_backend_delivers():
    assert contract.kv_grouping(resolve("numpy").backend)[0] == "consecutive"
    value, detail = contract.kv_grouping(GroupInterleaved())
    assert value == "interleaved" and "4 over 2: query head h reads K/V head h % n_kv_heads" in detail
    value, detail = contract.kv_grouping(GroupOnlyAtTheEnds())  # right for multi-query only
    assert value == "other" and "4 over 2: matches no mapping; 4 over 1: as the spec" in detail


def test_a_backend_without_the_capability_is_not_asked():
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    assert contract.kv_grouping(resolve("torch-mha").backend) == \
        ("n/a", "grouped K/V heads not declared (Capabilities.grouped_kv is False)")


def test_the_numpy_contract_row_carries_the_column():
    row = sem_rows.contract_row("numpy")
    assert row["entries"]["kv_grouping"]["value"] == "consecutive"
