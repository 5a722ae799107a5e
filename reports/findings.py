"""Findings: a run's failed records grouped by cause, and the conventions a backend declares.

The diagnosis step writes `conformance.findings` (one finding per cause per backend) and tags
each failed record it explains with `"finding": id`; a backend may declare conventions
(`capabilities.conventions`, known deviations from a fixed menu) and report its `versions`.
This module turns those into what both renderers show first. Every string here is raw and
backend-controlled: renderers escape it; `clip` bounds its length with a visible marker.
Failed records without a finding are never dropped: they form one synthetic "not diagnosed"
finding per backend, and the Failures section shows them in full, as before findings existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: the causes the diagnosis step names, with the words a reader sees
CAUSES = {
    "fully_masked_rows": "queries with no visible key",
    "padded_query_rows": "padded query rows",
    "precision": "precision",
    "output_dtype": "output dtype",
    "mask_ignored": "mask ignored",
    "mask_inverted": "mask inverted",
    "causal_alignment": "causal alignment",
    "crash": "crash",
    "non_finite": "NaN or inf where keys are visible",
    "unexplained": "unexplained",
}

#: the menu of declarable conventions: name -> value -> what it means; the spec's value first
CONVENTIONS = {
    "fully_masked_rows": {"zero_context": "zero context (the spec)", "mean_v": "the mean of V over every key",
                          "uniform_causal_keys": "uniform weights over the causal keys", "nan": "NaN",
                          "zero_output": "zero output"},
    "padded_query_rows": {"computed": "computed like any row (the spec)", "zero_output": "zero output"},
    "float64_compute": {"float64": "float64 (the spec)", "float32": "float64 inputs computed in float32"},
}
SPEC_VALUE = {name: next(iter(values)) for name, values in CONVENTIONS.items()}

LIMIT = 2000  # characters of one backend-controlled string shown; the rest stays in results.json
NOT_DIAGNOSED = "not diagnosed"


def clip(s: Any, limit: int = LIMIT) -> str:
    """s as text, cut at `limit` characters with a marker that says how long it was."""
    s = "" if s is None else str(s)
    if len(s) <= limit:
        return s
    return s[:limit] + f" […truncated: {len(s)} characters in all, full text in results.json]"


def _str_dict(d: Any) -> dict[str, str]:
    """A dict of strings from backend-controlled JSON (anything else: empty), each side clipped."""
    if not isinstance(d, dict):
        return {}
    return {clip(k, 200): clip(v, 200) for k, v in d.items()}


def declared(capabilities: Any) -> dict[str, str]:
    """The conventions a backend declares that deviate from the spec (the spec's own value is
    no deviation, so declaring it changes nothing)."""
    conv = _str_dict((capabilities or {}).get("conventions") if isinstance(capabilities, dict) else None)
    return {k: v for k, v in conv.items() if SPEC_VALUE.get(k) != v}


#: Promises a backend may declare, each checked where declared: capability field -> what the report says
PROMISES = {"batch_invariant": "batch invariance (bitwise)",
            "decode_invariant": "decoding equals the forward (bitwise)",
            "non_finite_masked_inputs": "non-finite masked inputs ignored"}


def promises(capabilities: Any) -> tuple[str, ...]:
    """The promises a backend declares (`PROMISES`), as the report words them."""
    caps = capabilities if isinstance(capabilities, dict) else {}
    return tuple(words for k, words in PROMISES.items() if caps.get(k) is True)


def versions(header: dict[str, Any]) -> dict[str, str]:
    return _str_dict(header.get("versions"))


def conventions_text(conv: dict[str, str]) -> str:
    """fully_masked_rows=mean_v, float64_compute=float32"""
    return ", ".join(f"{k}={v}" for k, v in conv.items())


def versions_text(v: dict[str, str]) -> str:
    return ", ".join(f"{k} {x}" for k, x in v.items()) if v else "not reported"


def convention_label(name: str, value: str) -> str:
    """What a declared value means, from the menu; a value off the menu says so."""
    return CONVENTIONS.get(name, {}).get(value, "not on the menu of conventions")


def declare_hint(name: str, value: str) -> str:
    """The one line a maintainer adds to accept the convention."""
    return f"Capabilities(conventions={{{name!r}: {value!r}}})"


@dataclass
class Example:
    check: str
    dtype: str
    reason: str
    counterexample: str | None
    repro: str | None


@dataclass
class Finding:
    """One cause behind failed records of one backend; id "" is the synthetic not-diagnosed one."""
    machine: str
    backend: str
    label: str
    id: str
    cause: str
    title: str
    detail: str
    convention: tuple[str, str] | None
    checks: list[tuple[str, list[str]]]  # (check, dtypes it explains), in matrix order
    example: Example | None
    failures: list[Any] = field(default_factory=list)  # the model's Failure objects it explains

    @property
    def diagnosed(self) -> bool:
        return bool(self.id)

    @property
    def cause_label(self) -> str:
        return CAUSES.get(self.cause, self.cause)

    @property
    def heading(self) -> str:
        return f"{self.id}. {self.title}" if self.diagnosed else f"{NOT_DIAGNOSED}: {self.title}"

    def worst(self, check: str) -> float | None:
        """The largest max_error / tolerance among the failed records of `check` it explains."""
        ratios = [f.max_error / f.tolerance for f in self.failures
                  if f.check == check and f.max_error is not None and f.tolerance]
        return max(ratios) if ratios else None


def _grouped(pairs: list[tuple[str, str]], order: dict[str, int]) -> list[tuple[str, list[str]]]:
    by_check: dict[str, list[str]] = {}
    for check, dtype in pairs:
        dtypes = by_check.setdefault(check, [])
        if dtype not in dtypes:
            dtypes.append(dtype)
    return sorted(by_check.items(), key=lambda kv: order.get(kv[0], len(order)))


def _finding(run: str, f: dict[str, Any], label: str, order: dict[str, int]) -> Finding:
    conv = f.get("convention")
    ex = f.get("example")
    checks = [(clip(c.get("check"), 200), clip(c.get("dtype"), 200)) for c in f.get("checks") or []]
    return Finding(
        run, f["backend"], label, clip(f["id"], 200), clip(f["cause"], 200), clip(f.get("title")),
        clip(f.get("detail")), (clip(conv["name"], 200), clip(conv["value"], 200)) if conv else None,
        _grouped(checks, order),
        Example(clip(ex["check"], 200), clip(ex["dtype"], 200), clip(ex.get("reason")),
                None if ex.get("counterexample") is None else clip(ex["counterexample"]),
                None if ex.get("repro") is None else clip(ex["repro"])) if ex else None)


def build(runs: list[dict[str, Any]], labels: dict[tuple[str, str], str], failures: list[Any],
          order: dict[str, int], multi: bool) -> list[Finding]:
    """Findings per backend in column order (then the file's order), each backend's
    not-diagnosed group last. Sets each failure's `finding` to the id that explains it, or None.

    A failed record belongs to the finding its "finding" key names (same run, same backend);
    a record without the key, or naming an unknown id, to the one finding of its backend whose
    check list names its (check, dtype); otherwise it is not diagnosed.
    """
    found: dict[tuple[str, str], list[Finding]] = {}
    for run in runs:
        machine = run["machine"]
        for f in (run.get("conformance") or {}).get("findings") or []:
            label = labels.get((machine, f["backend"]), f"{f['backend']} @ {machine}" if multi else f["backend"])
            found.setdefault((machine, f["backend"]), []).append(_finding(machine, f, label, order))
    for f in failures:
        own = found.get((f.machine, f.backend), [])
        by_id = [x for x in own if x.diagnosed and x.id == f.finding]
        listed = [x for x in own if any(c == f.check and f.dtype in d for c, d in x.checks)]
        home = by_id[:1] or (listed if len(listed) == 1 else [])
        f.finding = home[0].id if home else None
        if home:
            home[0].failures.append(f)
        else:
            rest = own[-1] if own and not own[-1].diagnosed else None
            if rest is None:
                rest = Finding(f.machine, f.backend, f.label, "", NOT_DIAGNOSED,
                               "failed records without a finding", "", None, [], None)
                found.setdefault((f.machine, f.backend), []).append(rest)
            rest.failures.append(f)
    for key, fs in found.items():
        for x in fs:
            if not x.diagnosed:
                x.checks = _grouped([(f.check, f.dtype) for f in x.failures], order)
        # the not-diagnosed group, made while reading failures, goes after the real findings
        fs.sort(key=lambda x: not x.diagnosed)
    col = {key: i for i, key in enumerate(labels)}
    return [x for key in sorted(found, key=lambda k: col.get(k, len(col))) for x in found[key]]
