"""What a run will do, decided before it starts: every (backend, dtype, check) it owes a record.

The controller builds the plan from the command line (duplicates dropped, order kept), takes
this shard's part of it, and writes it to `<out>/.plan.json`; every pytest-xdist worker reads
the same file, so the controller and the workers agree on each test's key without parsing test
ids. A test's id is `<index>-<ascii slug>`: the index is what identifies it, the slug is only for
people reading `-v` output, so any backend name (non-ASCII, newlines) works.

Sharding: `--shard K/N` keeps the keys whose index in the whole plan is K-1 modulo N, so N
machines running the same command with the same seed cover the plan exactly once between them,
and `python -m reports` can tell from any one shard what the whole plan was.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from conformance import text
from conformance.usage import UsageError

PLAN_FILE = ".plan.json"


@dataclass(frozen=True)
class Key:
    """One planned test: a backend (by its spec and its name), a dtype and a check."""
    index: int  # position in the whole plan (before sharding)
    spec: str
    backend: str
    dtype: str
    check: str

    @property
    def test_id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.backend}-{self.dtype}-{self.check}")
        return f"{self.index}-{slug}"

    def triple(self) -> tuple[str, str, str]:
        return (self.backend, self.dtype, self.check)


def unique(values: list[str]) -> list[str]:
    """`values` without repeats, first occurrence kept: `--check X --check X` runs X once."""
    return list(dict.fromkeys(values))


def parse_shard(text: str | None) -> tuple[int, int]:
    """'K/N' -> (K, N) with 1 <= K <= N; None -> (1, 1). UsageError names the bad value."""
    if text is None:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise UsageError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/3")
    return int(m[1]), int(m[2])


def whole_plan(backends: list[tuple[str, str]], dtypes: list[str], checks: list[str]) -> list[Key]:
    """Every key of the run in a fixed order: backends x dtypes x checks (as given)."""
    keys = [(spec, text.name(name), d, c) for spec, name in backends for d in dtypes for c in checks]
    return [Key(i, *k) for i, k in enumerate(keys)]


def run_order(keys: list[Key]) -> list[Key]:
    """The keys in the order the workers run them: by dtype, then check, then backend.

    The same check at the same dtype on each backend runs side by side, mostly in one worker
    (pytest-xdist hands out consecutive tests), so backends that draw the same examples (those
    declaring the same capabilities) find the references already computed in the worker's memo
    (`conformance.suite.memo`). Indices, and so shards and test ids, are the plan's own.
    """
    first: dict[tuple[int, str], int] = {}
    for k in keys:
        first.setdefault((0, k.dtype), len(first))
        first.setdefault((1, k.check), len(first))
    return sorted(keys, key=lambda k: (first[(0, k.dtype)], first[(1, k.check)], k.index))


def shard_of(keys: list[Key], shard: tuple[int, int]) -> list[Key]:
    k, n = shard
    return [key for key in keys if key.index % n == k - 1]


def plan_id(keys: list[Key], profile: str, seed: int | None, shards: int = 1) -> str:
    """A short digest naming the whole plan and how it is cut: the N shards of one run share it."""
    text = json.dumps([profile, seed, shards, [k.triple() for k in keys]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_shard(shard: tuple[int, int], total: int) -> None:
    """UsageError when N exceeds the plan's keys: such shards would be empty, and their
    bookkeeping grows with N, not with the plan."""
    k, n = shard
    if n > max(1, total):
        raise UsageError(f"--shard {k}/{n}: this plan has {total} (backend, dtype, check) keys, so N must be "
                         f"at most {total}")


def write(out_dir: Path, keys: list[Key]) -> Path:
    path = Path(out_dir) / PLAN_FILE
    path.write_text(json.dumps([asdict(k) for k in keys]))
    return path


def read(path: Path) -> list[Key]:
    return [Key(**d) for d in json.loads(Path(path).read_text())]


def missing(keys: list[Key], records: list[dict[str, Any]]) -> list[Key]:
    """The planned keys that have no record."""
    done = {(r["backend"], r["dtype"], r["check"]) for r in records}
    return [k for k in keys if k.triple() not in done]
