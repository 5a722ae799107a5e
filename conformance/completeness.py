"""Whether a conformance section is complete, recomputed from its plan, never taken on trust.

A results file says what it planned (backends x dtypes x checks, `plan`: shard K of N) and
what it holds (`records`), and also its own bookkeeping (`status`, `missing`, `planned`). The
bookkeeping is what a killed, edited or wrongly merged file gets wrong: 10 of 49 records with
`missing: []`, or two shards of different N merged into "complete" with one key missing and
one doubled. So readers (`python -m reports`, `results.merge`) recompute it here: every key
of the plan must have exactly one record; a key without one is missing, a second record of a
key is dropped and named, and the status is "complete" only if the file said so and the
recount agrees.

Shards belong together only when they are shards of the same whole plan, cut the same way
(the same N) by the same suite (the same commit): `shard_identity` and `compatible` say so.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

Triple = tuple[str, str, str]


class ShardMismatch(ValueError):
    """Shards that cannot be merged; the message is one line naming both."""


def whole_plan(conf: dict[str, Any]) -> list[Triple] | None:
    """Every (backend, dtype, check) of the whole plan, in plan order; None for a file too old
    to say (no dtypes)."""
    if not isinstance(conf.get("dtypes"), list):
        return None
    return [(b["name"], d, c["name"]) for b in conf.get("backends", []) for d in conf["dtypes"]
            for c in conf.get("checks", [])]


def owed(conf: dict[str, Any], whole: list[Triple]) -> list[Triple]:
    """The keys this section owes: the whole plan, or one shard's part of it (`index % N == K-1`)
    when it is a single shard not merged with its siblings; a merge owes the whole plan."""
    plan = conf.get("plan") or {}
    n, k = plan.get("shards", 1), plan.get("shard", 1)
    if n > 1 and "arrived" not in plan:
        return [t for i, t in enumerate(whole) if i % n == k - 1]
    return whole


def recheck(conf: dict[str, Any]) -> None:
    """Recompute `missing`, `planned` and `status` of a conformance section from its plan and
    records (in place); duplicate records are dropped and listed under `duplicates`."""
    whole = whole_plan(conf)
    if whole is None:
        return
    keys = owed(conf, whole)
    planned = set(keys)
    seen: Counter[Triple] = Counter()
    kept = []
    for r in conf.get("records", []):
        t = (r.get("backend"), r.get("dtype"), r.get("check"))
        seen[t] += 1
        if seen[t] == 1:
            kept.append(r)
    doubled = [t for t, n in seen.items() if n > 1]
    unplanned = [t for t in seen if t not in planned]
    conf["records"] = kept
    conf["missing"] = [{"backend": b, "dtype": d, "check": c} for b, d, c in keys if (b, d, c) not in seen]
    conf["planned"] = len(keys)
    if doubled:
        conf["duplicates"] = [{"backend": b, "dtype": d, "check": c, "records": seen[(b, d, c)]}
                              for b, d, c in doubled]
    if unplanned:
        conf["unplanned"] = [{"backend": b, "dtype": d, "check": c} for b, d, c in unplanned]
    wrong = conf["missing"] or doubled or unplanned
    if conf.get("status") == "complete" and wrong:
        conf["status"] = "incomplete"
    elif conf.get("status") == "incomplete" and not wrong:
        conf["status"] = "complete"  # what the records show; a stale `missing` said otherwise


def shard_identity(run: dict[str, Any]) -> str | None:
    """A digest of what a sharded section's whole plan is (profile, seed, keys), N left out;
    None for a section that is not a shard."""
    conf = run.get("conformance") or {}
    plan = conf.get("plan") or {}
    if plan.get("shards", 1) <= 1:
        return None
    text = json.dumps([conf.get("profile"), conf.get("seed"), whole_plan(conf)])
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()[:16]


def compatible(first: dict[str, Any], other: dict[str, Any]) -> None:
    """Raise ShardMismatch unless `other` is a shard of the same run as `first` (same N, same
    suite commit where both are known, N within the plan's size)."""
    a, b = first["conformance"]["plan"], other["conformance"]["plan"]
    who = f"{first['machine']!r} (shard {a['shard']}/{a['shards']}) and {other['machine']!r} " \
          f"(shard {b['shard']}/{b['shards']})"
    if a["shards"] != b["shards"]:
        raise ShardMismatch(f"shards of one plan cut into different numbers of parts: {who}; run every "
                            f"shard with the same --shard K/N")
    ca, cb = ((r.get("environment") or {}).get("commit") for r in (first, other))
    if ca and cb and ca != cb:
        raise ShardMismatch(f"shards of different suite versions (commit {ca[:12]} and {cb[:12]}): {who}; "
                            f"run every shard from the same commit")


def sane_shards(run: dict[str, Any]) -> None:
    """Raise ShardMismatch for a shard whose N or K cannot belong to its plan."""
    plan = (run.get("conformance") or {}).get("plan") or {}
    n, k, total = plan.get("shards", 1), plan.get("shard", 1), plan.get("total", 0)
    if n > max(1, total) or not 1 <= k <= n:
        raise ShardMismatch(f"{run.get('machine')!r}: shard {k}/{n} of a plan of {total} keys; N must be "
                            f"at most the number of planned keys")
