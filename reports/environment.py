"""What ran: a machine's environment block and each backend's reported versions, as table rows."""

from __future__ import annotations

from typing import Any

from reports import findings as fnd


def short_commit(commit: str | None) -> str | None:
    return commit[:12] if commit else commit


def environment_rows(env: dict[str, Any]) -> list[tuple[str, str]]:
    """The environment block as (what, value) lines a reader compares across machines."""
    rows = [("OS", str(env.get("os", "?"))),
            ("CPU", str(env.get("cpu", "?")) + (f" ({env['cpu_count']} logical cores)"
                                               if env.get("cpu_count") else ""))]
    gpu = env.get("gpu")
    if gpu:
        parts = [str(gpu.get("name", "?"))]
        if gpu.get("memory_bytes"):
            parts.append(f"{gpu['memory_bytes'] / 2**30:.0f} GiB")
        for key, word in (("driver", "driver"), ("cuda_runtime", "CUDA"), ("capability", "sm")):
            if gpu.get(key):
                parts.append(f"{word} {gpu[key]}")
        rows.append(("GPU", ", ".join(parts)))
    else:
        rows.append(("GPU", "none"))
    rows.append(("Python", str(env.get("python", "?"))))
    libs = env.get("libraries") or {}
    if libs:
        rows.append(("Libraries", ", ".join(f"{k} {v}" for k, v in libs.items() if v)))
    blas = [", ".join(str(b[k]) for k in ("internal_api", "version", "threading_layer") if b.get(k))
            + (f" ({b['num_threads']} threads)" if b.get("num_threads") is not None else "")
            for b in env.get("blas") or []]
    if blas:
        rows.append(("BLAS", "; ".join(blas)))
    threads = env.get("threads") or {}
    simple = [f"{k}={v}" for k, v in threads.items() if v is not None and not isinstance(v, (list, dict))]
    if simple:
        rows.append(("Threads", ", ".join(simple)))
    commit = env.get("commit")
    dirty = env.get("dirty")
    rows.append(("Commit", (short_commit(commit) or "unknown")
                 + (" (dirty: uncommitted changes)" if dirty else "" if dirty is False else " (dirty: unknown)")))
    return rows


def backend_rows(columns: list[Any], verdicts: list[str]) -> list[tuple[str, str, str, str]]:
    """(backend label, verdict text, declared conventions, reported versions) per matrix column;
    what a backend did not declare or report says so."""
    out = []
    for c, v in zip(columns, verdicts):
        conv = "; ".join(f"{k}={x} ({fnd.convention_label(k, x)})" for k, x in c.conventions.items())
        promised = f"promises {', '.join(c.promises)}" if c.promises else ""
        conv = "; ".join(t for t in (conv, promised) if t)
        out.append((c.label, v, conv or "none declared", fnd.versions_text(c.versions)))
    return out
