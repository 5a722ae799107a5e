"""The run directory (`--out`): checked before the run, owned by one run at a time, cleaned.

`claim()` creates the directory, takes an exclusive lock on `<out>/.lock` (held until the
process ends, released by the OS even on a crash or SIGKILL), and removes what an earlier run
left that would mislead a reader: failure bundles (`failures/*.npz` of failures that may no
longer exist), per-test record files and crash markers. Any problem is a one-line UsageError:
`--out` naming a file, an unwritable place, or a directory another run holds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

from conformance.usage import UsageError

RECORDS = ".records"   # one JSON file per finished test, written by the worker that ran it
CRASHED = ".crashed"   # one file per backend (by plan index) that crashed a worker
STALE = ("failures", RECORDS, CRASHED)


def claim(out: Path) -> IO[str]:
    """Create and lock `out` for this run; returns the open lock file (keep it open)."""
    import fcntl

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is an existing file, not a directory; name a directory")
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
    for name in STALE:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (RECORDS, CRASHED):
        (out / name).mkdir()
    return lock
