"""The run directory (`--out`): checked before the run, owned by one run at a time, cleaned.

`claim()` creates the directory, takes an exclusive lock on `<out>/.lock` (held until the
process ends, released by the OS even on a crash or SIGKILL), and removes what an earlier run
left that would mislead a reader: failure bundles (`failures/*.npz` of failures that may no
longer exist), per-test record files and crash markers; nothing else. An existing directory
must be empty or a run directory (one a run wrote: `.lock`, `.plan.json`, `records.jsonl` or
this suite's `results.json`); a results.json the suite did not write is never overwritten.
Any problem is a one-line UsageError: `--out` naming a file, an unwritable place, a directory
that is not a run directory, odd contents (`failures` a file, `results.json` a directory), or
a directory another run holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from conformance.usage import UsageError

RECORDS = ".records"   # one JSON file per finished test, written by the worker that ran it
CRASHED = ".crashed"   # where earlier versions kept crash markers (now outside --out); cleaned
#: What a run writes into --out (besides failures/*.npz and the files in RECORDS and CRASHED)
OURS = (".lock", ".plan.json", "records.jsonl", "results.json")
#: Each of these, where it exists, must be a directory (the rest, files)
DIRS = ("failures", RECORDS, CRASHED)


def _ours(results: Path) -> bool:
    """Whether `results` is a results file of this suite (a run may update its sections)."""
    import json

    from conformance.results import KIND

    try:
        return json.loads(results.read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def check(out: Path) -> None:
    """UsageError unless `out` is new, empty, or a run directory with sane contents."""
    shown = repr(str(out))
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {shown} is an existing file, not a directory; name a directory")
    try:
        entries = {p.name: p for p in out.iterdir()} if out.is_dir() else {}
    except OSError as e:
        raise UsageError(f"--out {shown}: cannot read it ({e.strerror or e}); name a readable directory") from None
    if not entries:
        return
    results = entries.get("results.json")
    if not any(n in entries for n in OURS[:3]) and not (results is not None and _ours(results)):
        raise UsageError(f"--out {shown} is not empty and is not a run directory (no .lock, .plan.json, "
                         f"records.jsonl or results.json of this suite); name a new or empty directory, "
                         f"or an earlier run's")
    for name, p in entries.items():
        if name in DIRS and not p.is_dir() or name in OURS and (p.is_dir() or p.is_symlink()):
            kind = "a directory" if name in OURS else "not a directory"
            raise UsageError(f"--out {shown}: {name!r} there is {kind}; a run needs to write it, so move it "
                             f"or choose another --out")
    if results is not None and not _ours(results):
        raise UsageError(f"--out {shown} holds a results.json that is not this suite's; move it or choose "
                         f"another --out (a run would overwrite it)")


def _clean(out: Path) -> None:
    """Remove what an earlier run wrote that would mislead: its bundles, records and markers."""
    for pattern, where in (("*.npz", "failures"), ("*.json", RECORDS), ("*.tmp", RECORDS), ("*", CRASHED)):
        folder = out / where
        if folder.is_dir():
            for p in folder.glob(pattern):
                if p.is_file() or p.is_symlink():
                    p.unlink(missing_ok=True)


def claim(out: Path) -> IO[str]:
    """Create and lock `out` for this run; returns the open lock file (keep it open)."""
    import fcntl

    out = Path(out)
    check(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = (out / ".lock").open("a+")
    except OSError as e:
        raise UsageError(f"--out {str(out)!r}: cannot create or write there ({e.strerror or e}); "
                         f"name a writable directory") from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise UsageError(f"--out {str(out)!r} is in use by another run (pid {holder}); wait for it "
                         f"or choose another --out (shards need one each)") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    _clean(out)
    (out / RECORDS).mkdir(exist_ok=True)
    return lock
