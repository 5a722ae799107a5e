"""The suite inside an adopter's own pytest: one item per (dtype, check) for one backend.

A maintainer adds one test module to their repository (docs/install-and-adopt.md):

    from mha_conformance.conformance.pytest_entry import conformance_tests

    test_attention = conformance_tests("mypkg.attn:Backend", expect="tests/mha-expect.toml")

and pytest collects `test_attention[float32-matches_spec]`, ... (ids `<dtype>-<check>`, stable
across runs and versions that keep the check's name), selectable with `-k`. Each item runs the
check exactly as a `mha-conformance` run does (`run_check`: the same strategies, references
and tolerance model) and ends passed, failed (the suite's message, the shrunk example and a
repro line), skipped ("unsupported: ..." outside the declared capabilities; "skipped: ..." when
`availability()` gives a reason), or xfailed for a failure the `expect` list names (the TOML
format of `--expect`, conformance/expect.py); a listed combination that passes fails its item
("unexpectedly passing"), unless the entry says `strict = false`.

What it gives up against the command line: the backend runs in the user's pytest process, so
a crash ends that process and a hang past the hard limit ends it too (the command line's
workers isolate each backend and record the crash or hang); process state is put back after
each example, but memory a backend keeps is not charged to it; there is no results.json, no
findings by cause and no report.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Callable, Sequence

#: Where failure bundles go when `out` is not given: under pytest's own temporary directory
#: (pytest keeps the last three), so a repro line runs as printed until then.
BUNDLES = "mha-conformance-failures"


def failure_text(backend: str, dtype: str, check: str, rec: dict[str, Any]) -> str:
    """The suite's failure message for one record: what broke, the example, the repro line."""
    step = "end to end" if rec.get("step") is None else f"step {rec['step']}"
    lines = [f"{backend} [{dtype}] {check} ({step})", f"  {rec['reason']}"]
    if rec.get("counterexample"):
        lines.append(f"  example: {rec['counterexample']}")
    if "repro" in rec:
        lines.append(f"  reproduce: {rec['repro']}")
    return "\n".join(lines)


def _profile(name: str) -> str:
    """Our settings profile `name` under a name of its own ("quick-pytest-entry"): registering
    "default" would change the adopter's own Hypothesis tests. The suffix keeps its size regime
    (`profiles.large_regime` reads the part before the dash)."""
    from hypothesis import settings

    from conformance.suite.profiles import PROFILES

    if name not in PROFILES:
        raise ValueError(f"profile {name!r} is not a suite profile; valid: {', '.join(PROFILES)}")
    own = f"{name}-pytest-entry"
    settings.register_profile(own, deadline=None, report_multiple_bugs=False, print_blob=True, **PROFILES[name])
    return own


def conformance_tests(backend: str, *, dtypes: Sequence[str] | None = None, checks: Sequence[str] | None = None,
                      expect: str | Path | None = None, profile: str = "default", seed: int | None = None,
                      out: str | Path | None = None) -> Callable[..., None]:
    """A pytest test function parametrised by (dtype, check) for `backend`; assign it to a
    `test_...` name in a test module.

    backend: a built-in name, `module.path:attr` or an entry point (as `--backend`).
    dtypes, checks: which to run (default all; an unknown name is an error naming the valid ones).
    expect: an expected-failures TOML file (`--expect`'s format), relative to the current directory.
    profile: the suite's Hypothesis profile (quick, default, thorough, reproducible, mutants).
    seed: a fixed Hypothesis seed (default: pytest's --hypothesis-seed, else random).
    out: directory for failure bundles (default: under pytest's temporary directory).
    """
    import pytest

    from conformance.expect import load
    from conformance.suite.checks import catalogue
    from impls.registry import resolve
    from spec.config import FLOAT_DTYPES

    known = [c.name for c in catalogue()]
    for what, given, valid in (("dtype", dtypes, FLOAT_DTYPES), ("check", checks, known)):
        bad = [g for g in (given or ()) if g not in valid]
        if bad:
            raise ValueError(f"unknown {what} {bad[0]!r}; valid: {', '.join(valid)}")
    dtypes, checks = list(dtypes or FLOAT_DTYPES), list(checks or known)
    entries = load(expect, known, FLOAT_DTYPES) if expect is not None else []
    own_profile = _profile(profile)
    info = resolve(backend)  # at collection: a bad spec is a collection error naming it
    params = [pytest.param(d, c, id=re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{d}-{c}")) for d in dtypes for c in checks]

    @pytest.mark.parametrize(("dtype", "check"), params)
    def test(dtype: str, check: str, request: pytest.FixtureRequest) -> None:
        bundles = Path(out) if out is not None else request.getfixturevalue("tmp_path_factory").getbasetemp() / BUNDLES
        given = seed if seed is not None else request.config.getoption("--hypothesis-seed", default=None)
        rec = _run(info, dtype, check, own_profile, None if given is None else int(given), bundles)
        _outcome(info.backend.name, dtype, check, rec, entries, expect)

    test.__doc__ = f"The conformance suite on {backend}: one item per (dtype, check)."
    return test


def _run(info: Any, dtype: str, check_name: str, profile: str, seed: int | None, bundles: Path) -> dict[str, Any]:
    """One check on one dtype under `profile`, as a record: outcome, reason, example, repro."""
    from hypothesis import settings

    from conformance import COMMAND
    from conformance.suite.checks import get
    from conformance.suite.engine import run_check
    from conformance.suite.process_state import restored_state
    from impls.registry import import_path

    check, backend = get(check_name), info.backend
    rec: dict[str, Any] = {"backend": backend.name, "dtype": dtype, "check": check_name, "step": check.step}
    skip, error = info.skip_reason, info.error  # the registry's one policy, read once at resolve
    if error or skip:
        return {**rec, "outcome": "failed" if error else "skipped", "reason": error or skip}
    previous = settings.get_current_profile_name()
    settings.load_profile(profile)  # for this item only: the adopter's own tests keep theirs
    try:
        with restored_state(full=True):
            result = run_check(check, backend, dtype, seed=seed)
    finally:
        settings.load_profile(previous)
    rec.update(outcome=result.outcome, reason=result.reason, counterexample=result.counterexample)
    if result.outcome == "failed" and result.case is not None:
        path = bundles / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', backend.name)}__{dtype}__{check_name}.npz"
        result.case.save(path, {"backend": backend.name, "backend_spec": info.spec,
                                "import_path": import_path(info.spec), "check": check_name, "reason": result.reason})
        rec["repro"] = f"{COMMAND} repro {shlex.quote(str(path))}"
    return rec


def _outcome(backend: str, dtype: str, check: str, rec: dict[str, Any], entries: list, expect: Any) -> None:
    """Tell pytest the record's outcome, the expected-failures list applied."""
    import pytest

    from conformance.expect import apply, fails_run
    from conformance.verdict import EXPECTED, UNEXPECTED_PASS

    rec = apply(entries, rec)
    if rec["outcome"] in ("unsupported", "skipped"):
        pytest.skip(f"{rec['outcome']}: {rec['reason']}")
    if rec["outcome"] == EXPECTED:
        pytest.xfail(f"expected failure ({rec['expected']['reason']}): {rec['reason']}")
    if rec["outcome"] == UNEXPECTED_PASS and fails_run(rec):
        pytest.fail(f"{backend} [{dtype}] {check}: unexpectedly passing; listed in {expect} "
                    f"(entry {rec['expected']['entry']}) because: {rec['expected']['reason']}; "
                    f"remove the entry", pytrace=False)
    if rec["outcome"] == "failed":
        pytest.fail(failure_text(backend, dtype, check, rec), pytrace=False)
