"""Expected failures with reasons: `python -m conformance --expect FILE` (a TOML file).

    [[expect]]
    backend = "bug-wrong-scale"      # the backend's name, as the summary shows it (a glob pattern)
    check = "matches_spec"           # a check name or a glob pattern ("step*", "*")
    dtype = "float*"                 # optional, default "*": a glob pattern over the dtypes
    reason = "scores use 1/sqrt(d_out); upstream issue #12"
    strict = true                    # optional, default true

A planned (backend, dtype, check) that an entry names and that fails is recorded with outcome
"expected failure" (its own failure reason kept, the entry's reason beside it): counted apart,
never as a pass, and the run's exit status stays 0 for it. One that passes is "unexpectedly
passing" and makes the run exit 1, so lists stay current; with `strict = false` (a failure that
shows only on some draws) the pass is still recorded as unexpectedly passing but does not fail
the run. `--expect` may be given several times; the files' entries are read in order, then the
built-in backends' known library defects (`impls/expected/known-defects.toml`, off with
`--no-known-defects`), and the first entry that matches a combination decides it.

A bad file (not TOML, an unknown key, a missing or mistyped field, a check or dtype pattern
that names nothing) is a usage error naming the entry: one line, exit 2.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from conformance.usage import UsageError

from conformance.verdict import EXPECTED, UNEXPECTED_PASS  # the two outcomes this module adds
#: The built-in backends' measured library defects that no convention covers, applied to every
#: run after the user's lists unless --no-known-defects.
KNOWN_DEFECTS = Path(__file__).resolve().parent.parent / "impls" / "expected" / "known-defects.toml"
FIELDS = {"backend": str, "check": str, "dtype": str, "reason": str, "strict": bool}
REQUIRED = ("backend", "check", "reason")


@dataclass(frozen=True)
class Entry:
    """One line of the list: which combinations, why they fail, and whether a pass fails the run."""
    number: int  # 1-based position in the file's [[expect]] array, for messages
    backend: str
    check: str
    dtype: str
    reason: str
    strict: bool = True
    file: str = ""  # the list it comes from (several --expect files, the known defects)

    def matches(self, backend: str, dtype: str, check: str) -> bool:
        return (fnmatch.fnmatchcase(backend, self.backend) and fnmatch.fnmatchcase(dtype, self.dtype)
                and fnmatch.fnmatchcase(check, self.check))

    def to_dict(self) -> dict[str, Any]:
        """What a record carries as its "expected" field."""
        return {"entry": self.number, "file": self.file, "reason": self.reason, "strict": self.strict,
                "pattern": {"backend": self.backend, "dtype": self.dtype, "check": self.check}}


def _entry(path: Path, i: int, raw: Any, checks: Iterable[str], dtypes: Iterable[str]) -> Entry:
    where = f"--expect {path}: entry {i} ([[expect]] number {i})"
    if not isinstance(raw, dict):
        raise UsageError(f"{where} is a {type(raw).__name__}, expected a table with {', '.join(REQUIRED)}")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(FIELDS)}")
    for name in REQUIRED:
        if name not in raw:
            raise UsageError(f"{where}: missing {name!r} (every entry needs {', '.join(REQUIRED)})")
    for name, kind in FIELDS.items():
        if name in raw and not isinstance(raw[name], kind):
            raise UsageError(f"{where}: {name} = {raw[name]!r} is a {type(raw[name]).__name__}, "
                             f"expected a {'boolean' if kind is bool else 'string'}")
    if not raw["reason"].strip():
        raise UsageError(f"{where}: reason is empty; say why this combination fails")
    e = Entry(i, raw["backend"], raw["check"], raw.get("dtype", "*"), raw["reason"].strip(), raw.get("strict", True),
              str(path))
    # a pattern that can match nothing is a typo: it would silently expect nothing
    checks, dtypes = list(checks), list(dtypes)
    if not any(fnmatch.fnmatchcase(c, e.check) for c in checks):
        raise UsageError(f"{where}: check {e.check!r} names no check; valid: {', '.join(checks)} (or a glob pattern)")
    if not any(fnmatch.fnmatchcase(d, e.dtype) for d in dtypes):
        raise UsageError(f"{where}: dtype {e.dtype!r} names no dtype; valid: {', '.join(dtypes)} (or a glob pattern)")
    return e


def load(path: str | Path, checks: Iterable[str], dtypes: Iterable[str]) -> list[Entry]:
    """The file's entries, validated against the known check and dtype names; UsageError otherwise."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--expect {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--expect {path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--expect {path}: not valid TOML: {str(e).splitlines()[0]}") from None
    extra = sorted(set(doc) - {"expect"})
    if extra:
        raise UsageError(f"--expect {path}: unknown top-level key {extra[0]!r}; entries are [[expect]] tables")
    raw = doc.get("expect", [])
    if not isinstance(raw, list):
        raise UsageError(f"--expect {path}: 'expect' must be an array of tables ([[expect]]), got {type(raw).__name__}")
    checks, dtypes = list(checks), list(dtypes)
    return [_entry(path, i, r, checks, dtypes) for i, r in enumerate(raw, 1)]


def find(entries: list[Entry], backend: str, dtype: str, check: str) -> Entry | None:
    return next((e for e in entries if e.matches(backend, dtype, check)), None)


def apply(entries: list[Entry], rec: dict[str, Any]) -> dict[str, Any]:
    """The record as the run keeps it: a listed failure becomes an expected failure, a listed
    pass unexpectedly passing; everything else (unlisted, unsupported, skipped) unchanged."""
    if rec.get("outcome") not in ("failed", "passed"):
        return rec
    e = find(entries, rec["backend"], rec["dtype"], rec["check"])
    if e is None:
        return rec
    if rec["outcome"] == "failed":
        return {**rec, "outcome": EXPECTED, "expected": e.to_dict()}
    return {**rec, "outcome": UNEXPECTED_PASS, "expected": e.to_dict()}


def fails_run(rec: dict[str, Any]) -> bool:
    """Whether this record makes the run exit 1: a failure, or a strict entry's pass."""
    if rec.get("outcome") == "failed":
        return True
    return rec.get("outcome") == UNEXPECTED_PASS and bool((rec.get("expected") or {}).get("strict", True))


def print_outcomes(records: list[dict[str, Any]]) -> None:
    """The run summary's lines for the list: unexpected passes (which fail the run unless
    strict = false), then the expected failures, each with the entry's reason."""
    passes = [r for r in records if r["outcome"] == UNEXPECTED_PASS]
    for r in [r for r in passes if fails_run(r)]:
        print(f"\nUNEXPECTEDLY PASSING {r['backend']} [{r['dtype']}] {r['check']} "
              f"(fails the run: remove it from the --expect file)\n  listed because: {r['expected']['reason']}")
    lenient = [r for r in passes if not fails_run(r)]  # strict = false: a failure some draws show
    if lenient:
        names = ", ".join(f"{r['backend']} [{r['dtype']}] {r['check']}" for r in lenient[:10])
        more = f" and {len(lenient) - 10} more" if len(lenient) > 10 else ""
        print(f"\n{len(lenient)} listed as failing on some draws passed this time (strict = false: not a "
              f"failure): {names}{more}")
    xfail = [r for r in records if r["outcome"] == EXPECTED]
    if xfail:
        print(f"\n{len(xfail)} expected failure{'s' * (len(xfail) != 1)} (--expect):")
    for r in xfail[:20]:
        print(f"  {r['backend']} [{r['dtype']}] {r['check']}: {r['expected']['reason']}")
    if len(xfail) > 20:
        print(f"  ... and {len(xfail) - 20} more (listed in results.json)")
