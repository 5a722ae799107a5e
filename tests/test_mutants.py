"""The suite's own test: every mutant is killed, the correct PlainBackend passes everything.

One run of `conformance.mutants.kill.run` (two worker processes, fixed seed, the mutants
profile, early stop at the first failing check) serves every test here.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.suite.checks import catalogue
from conformance.mutants import kill
from conformance.mutants.__main__ import main
from conformance.mutants.base import PlainBackend
from conformance.mutants.bias import BIAS_GRAD_MUTANTS
from conformance.mutants.bitwise import BITWISE_MUTANTS
from conformance.mutants.cache import CACHE_MUTANTS
from conformance.mutants.grouped import GROUPED_CACHE_MUTANTS
from conformance.mutants.nonfinite import NON_FINITE_MUTANTS
from conformance.mutants.catalogue import MUTANTS
from conformance.mutants.sized import SIZE_MUTANTS
from conformance.mutants.windows import WINDOW_DECODE_MUTANTS

SEED = 0
#: The KV-cache mutants' forward is right, so each passes every forward check before a cache
#: check kills it (45 to 90 s per dtype on this loaded machine): tests/test_cache_checks.py
#: kills them with the cache checks alone, and this run takes the rest of the catalogue.
#: So are the bitwise mutants (right values, only the promised bits differ): tests/test_bitwise.py and
#: tests/test_declarations.py; the non-finite ones (right on finite inputs): tests/test_declarations.py;
#: the window's decode mutants (right when Tq = Tk): tests/test_window_softcap.py; and the bias and
#: sink gradient mutants (right forward): tests/test_bias_sinks.py.
RUN = [m for m in MUTANTS if m not in CACHE_MUTANTS + GROUPED_CACHE_MUTANTS + BITWISE_MUTANTS + NON_FINITE_MUTANTS
       + WINDOW_DECODE_MUTANTS + BIAS_GRAD_MUTANTS]


@pytest.fixture(scope="module")
def report() -> kill.Report:
    return kill.run(RUN, kill.DTYPES, profile="mutants", seed=SEED, processes=2, control=True)


def _verdict(report: kill.Report, name: str, dtype: str) -> kill.Verdict:
    return next(v for v in report.verdicts if v.mutant == name and v.dtype == dtype)


@pytest.mark.parametrize("mutant", RUN, ids=[m.name for m in RUN])
def test_mutant_is_killed(report, mutant):
    for dtype in kill.DTYPES:
        v = _verdict(report, mutant.name, dtype)
        if dtype == "float16" and mutant.float16_na:
            assert v.outcome == "n/a" and v.reason == mutant.float16_na
            continue
        assert v.outcome == "killed", f"{mutant.name} at {dtype}: {v.label()} {v.reason}"
        assert v.check and v.reason, v


@pytest.mark.parametrize("dtype", kill.DTYPES)
def test_plain_backend_passes_every_check(report, dtype):
    v = _verdict(report, PlainBackend.name, dtype)
    assert v.outcome == "survived", f"PlainBackend fails {v.check} at {dtype}: {v.reason}"
    supported = [c for c in catalogue() if not c.unsupported(PlainBackend(), dtype)]
    # the promises it does not make are checked on their controls (tests/test_bitwise.py, test_declarations.py);
    # it declares no window (the window mutants' base does, checked in tests/test_window_softcap.py), nor a
    # bias or sinks (the bias mutants' base does, checked in tests/test_bias_sinks.py)
    assert {c.name for c in catalogue()} - {c.name for c in supported} == {"batch_invariant_bitwise",
                                                                             "decode_invariant_bitwise",
                                                                             "window_ignores_outside_keys",
                                                                             "sinks_at_minus_infinity_are_none",
                                                                             "bias_row_constant_changes_nothing"}
    assert v.passed == len(supported), f"only {v.passed} of {len(supported)} checks passed (others unsupported?)"
    assert not report.control_failures() and not report.survivors()


def test_table_lists_each_mutant(report):
    text = kill.table(report)
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].split(" | ")][:2] == ["mutant", "bug"] and "float32" in lines[0] and "float16" in lines[0]
    for m in RUN + [PlainBackend]:
        row = next((ln for ln in lines if ln.startswith(m.name + " ")), None)
        assert row is not None, f"{m.name} missing from the table"
        assert kill.bug(m) in row
        assert ("SURVIVED" not in row) and ("killed by" in row or m is PlainBackend)
    assert f"float32: {len(RUN)}/{len(RUN)} killed" in text
    na = sum(bool(m.float16_na) for m in RUN)
    assert f"float16: {len(RUN) - na}/{len(RUN) - na} killed ({na} n/a)" in text
    assert report.to_dict()["mutants"][0]["name"] == PlainBackend.name


def test_catalogue_is_well_formed():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names)) >= 15
    for m in MUTANTS:
        assert issubclass(m, PlainBackend) and m.name.startswith("mutant-")
        assert kill.bug(m), f"{m.__name__} needs a docstring naming its bug"
        assert m.float16_na is None or (isinstance(m.float16_na, str) and m.float16_na)
        first = getattr(m, "checks_first", None)  # a group, or check names that exist
        checks = {c.name: c for c in catalogue()}
        assert first is None or first in {c.group for c in checks.values()} or set(first) <= set(checks), first


def test_checks_first_runs_the_named_checks_then_the_rest_in_catalogue_order():
    from conformance.mutants.inputs import KeyIndex16

    order = sorted(catalogue(), key=lambda c: kill.first_rank(KeyIndex16(), c))
    assert order[0].name == "decode_long_cache"
    assert [c.name for c in order[1:]] == [c.name for c in catalogue() if c.name != "decode_long_cache"]


@pytest.mark.parametrize("argv, message", [
    (["--mutant", "mutant-nope"], "unknown mutant 'mutant-nope'"),
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--dtype", "bfloat16"], "float64, float32, float16 only"),
])
def test_cli_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_runs_one_mutant_in_process(tmp_path, capsys):
    assert main(["--mutant", "mutant-no-output-bias", "--dtype", "float32", "--no-control", "-j", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mutant-no-output-bias" in out and "killed by" in out and (tmp_path / "mutants.json").exists()


# the sizes each size-keyed mutant's bug needs: past its threshold, inside the size regime
_PAST_THRESHOLD = {
    "mutant-query-tile-dropped": dict(T=300), "mutant-head-dim-tail": dict(head_dim=72),
    "mutant-heads-beyond-grid": dict(H=17), "mutant-d-in-tail": dict(d_in=70),
    "mutant-max-seqlen": dict(T=1100), "mutant-bh-grid-overflow": dict(B=9, H=4),
}


@pytest.mark.parametrize("mutant", SIZE_MUTANTS, ids=[m.name for m in SIZE_MUTANTS])
def test_size_mutants_are_right_at_the_old_sizes_and_wrong_past_their_threshold(mutant):
    from conformance.suite.strategies import case_from
    from spec.config import AttentionConfig

    def output(cls, B=3, T=129, d_in=24, H=4, head_dim=8):  # defaults: the old strategies' largest
        case = case_from(AttentionConfig(d_in=d_in, d_out=H * head_dim, n_heads=H), B, T, "float32", seed=3)
        backend = cls()
        return backend.forward(case.x.astype(np.float32), backend.prepare(case.params, "float32"), case.config)

    assert np.array_equal(output(mutant), output(PlainBackend))
    past = _PAST_THRESHOLD[mutant.name]
    assert not np.allclose(output(mutant, **past), output(PlainBackend, **past), rtol=1e-3, atol=1e-4)
