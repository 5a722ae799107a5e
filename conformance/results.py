"""The results format the suite owns: `results.json`, its schema, writer, reader and environment block.

The conformance suite, the speed harness and the semantic probes write it; `python -m reports`
reads it. One file per run directory, validated by a JSON Schema.

Layout (schema `conformance/results.schema.json`, version SCHEMA_VERSION):

    {"schema_version": "1.0", "kind": "mha-conformance-results",
     "runs": [ {"machine": "label", "environment": {...},
                "conformance": {"status": "running|complete|partial", "started": ..., "finished": ...,
                                "duration_s": ..., "profile": ..., "seed": ..., "command": ...,
                                "backends": [...], "records": [...]} | null,
                "speed": {"status": ..., "started": ..., "peak": {...}, "cells": [...], ...} | null} ]}

A run directory written by one machine holds one run; a merged report holds several. The
conformance suite and the speed harness each own one section of the run and rewrite the file
atomically (write to a temporary file, then rename), so a reader never sees half a file and a
run killed halfway leaves its last complete snapshot, marked "running" (read as partial).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from conformance import INSTALLED, completeness
from conformance.same_machine import combine

SCHEMA_VERSION = "1.0"
KIND = "mha-conformance-results"
SCHEMA_PATH = Path(__file__).parent / "results.schema.json"


class ResultsError(ValueError):
    """An unreadable or invalid results file; the message is one line for users."""


def empty_document() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "runs": []}


def atomic_write_json(path: Path, doc: Any, compact: bool = False) -> None:
    """Write doc to path as JSON, replacing it in one step; `compact`: on one line, for the
    writes made while a run is going (Python's JSON encoder is C only without an indent: a
    default run's results, 2,320 records, took 25 ms indented and 6 ms on one line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=None if compact else 1, default=str)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a results file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate(doc: Any, where: str = "results") -> None:
    """Raise ResultsError naming the first schema violation."""
    import jsonschema  # lazily: only readers and tests validate

    schema = json.loads(SCHEMA_PATH.read_text())
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as e:
        at = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ResultsError(f"{where}: not a valid results file at {at}: {e.message[:200]}") from None


def load(path: Path) -> dict[str, Any]:
    """Read and validate a results.json (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ResultsError(f"{path}: not a results file (JSON nested too deeply to read)") from None
    try:
        validate(doc, str(path))
    except RecursionError:
        raise ResultsError(f"{path}: not a valid results file (nested too deeply)") from None
    from conformance.text import safe_tree

    # a file written by an older suite may hold lone surrogates (JSON escapes them; UTF-8 cannot)
    return safe_tree(doc)


#: The sections of one machine's run that separate commands write.
SECTIONS = ("conformance", "speed", "semantics")


def update_section(path: Path, machine: str, environment: dict | None, section: str, data: dict,
                   compact: bool = False) -> None:
    """Set one section ("conformance", "speed" or "semantics") of this machine's run in results.json.

    The other sections of the same machine's run are kept; runs of other machines are kept too.
    `environment` replaces the run's environment block (None keeps the one there). An
    unreadable existing file is replaced (the new data matters more than a broken file).
    `compact`: written on one line (`atomic_write_json`).
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {', '.join(SECTIONS)}, got {section!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _directory_lock(path.parent):  # the semantic profile and the suite may write at once
        _update(path, machine, environment, section, data, compact)


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on the directory itself (flock; no lock file left in a report's folder);
    nothing where the platform has no flock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _update(path: Path, machine: str, environment: dict | None, section: str, data: dict, compact: bool) -> None:
    try:
        doc = json.loads(path.read_text())
        if doc.get("kind") != KIND or not isinstance(doc.get("runs"), list):
            doc = empty_document()
    except (OSError, ValueError):
        doc = empty_document()
    run = next((r for r in doc["runs"] if r.get("machine") == machine), None)
    if run is None:
        run = {"machine": machine, "environment": environment or collect(), "conformance": None, "speed": None}
        doc["runs"].append(run)
    if environment is not None:
        run["environment"] = environment
    run[section] = data
    atomic_write_json(path, doc, compact)


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document holding every run of `docs`; runs with the same machine label get a suffix,
    unless they are one machine in two environments (`conformance.same_machine`): then one run.

    Shards of one run (conformance sections of the same whole plan, `--shard K/N`) become one
    run again: their records together. Every section's completeness is then recomputed from its
    plan (`conformance.completeness`): every key of the whole plan needs exactly one record, so
    the merged status is "complete" only when all N shards are there and complete. Shards cut
    into different N, or run by different suite commits, are refused (ResultsError).
    """
    out, seen = empty_document(), {}
    shards: dict[str, dict[str, Any]] = {}  # the whole plan's identity -> the merged run
    try:
        for doc in docs:
            for run in doc["runs"]:
                ident = completeness.shard_identity(run)
                if ident is not None:
                    completeness.sane_shards(run)
                    if ident in shards:
                        completeness.compatible(shards[ident], run)
                        _add_shard(shards[ident], run)
                        continue
                    run = _first_shard(run)
                    shards[ident] = run
                label = run["machine"]
                if label in seen and ident is None:  # one machine in another environment?
                    i = next(i for i, r in enumerate(out["runs"]) if r["machine"] == label)
                    both = combine(out["runs"][i], run)
                    if both is not None:
                        out["runs"][i] = both
                        continue
                seen[label] = seen.get(label, 0) + 1
                if seen[label] > 1:
                    run = dict(run, machine=f"{label} ({seen[label]})")
                    if ident is not None:
                        shards[ident] = run
                out["runs"].append(run)
    except completeness.ShardMismatch as e:
        raise ResultsError(str(e)) from None
    for run in shards.values():
        _close_shards(run["conformance"])
    for run in out["runs"]:
        if run.get("conformance"):
            run["conformance"] = dict(run["conformance"])
            completeness.recheck(run["conformance"])
    return out


def _first_shard(run: dict[str, Any]) -> dict[str, Any]:
    conf = dict(run["conformance"])
    conf["plan"] = dict(conf["plan"], arrived=[conf["plan"]["shard"]])
    conf["records"] = list(conf["records"])
    conf["missing"] = list(conf.get("missing", []))
    if "findings" in conf:
        conf["findings"] = [dict(f, checks=list(f["checks"])) for f in conf["findings"]]
    conf["statuses"] = [conf["status"]]
    return dict(run, conformance=conf)


def _add_shard(run: dict[str, Any], other: dict[str, Any]) -> None:
    conf, more = run["conformance"], other["conformance"]
    if more["plan"]["shard"] in conf["plan"]["arrived"]:
        return  # the same shard given twice: its records are already here
    conf["plan"]["arrived"].append(more["plan"]["shard"])
    conf["records"] += _add_findings(conf, more)
    conf["missing"] += more.get("missing", [])
    conf["statuses"].append(more["status"])
    conf["planned"] = conf.get("planned", 0) + more.get("planned", 0)
    if other["machine"] not in run["machine"].split(" + "):
        run["machine"] = f"{run['machine']} + {other['machine']}"
    if run.get("speed") is None:
        run["speed"] = other.get("speed")


def _add_findings(conf: dict[str, Any], more: dict[str, Any]) -> list[dict[str, Any]]:
    """Merge another shard's findings into conf's; return its records pointing at the merged ids.

    Each shard diagnoses its own records and numbers its findings from F1, so ids collide: a
    finding with the same backend, cause and convention as one already here is the same cause
    (its checks join that one's); another keeps its id, suffixed with its shard if taken.
    """
    if "findings" not in more:
        return list(more["records"])
    mine = conf.setdefault("findings", [])
    rename: dict[str, str] = {}
    for f in more["findings"]:
        same = [g for g in mine if (g["backend"], g["cause"], g.get("convention")) ==
                (f["backend"], f["cause"], f.get("convention"))]
        if same:
            same[0]["checks"] += f["checks"]
            rename[f["id"]] = same[0]["id"]
            continue
        new = f["id"] if f["id"] not in {g["id"] for g in mine} else f"{f['id']}.shard{more['plan']['shard']}"
        mine.append(dict(f, id=new, checks=list(f["checks"])))
        rename[f["id"]] = new
    return [dict(r, finding=rename.get(r["finding"], r["finding"])) if r.get("finding") else r
            for r in more["records"]]


def _close_shards(conf: dict[str, Any]) -> None:
    """The merged status from the shards' own; `recheck` then recounts the whole plan's keys."""
    conf["plan"]["arrived"].sort()
    statuses = conf.pop("statuses")
    for word in ("running", "interrupted", "incomplete", "partial"):
        if word in statuses:
            conf["status"] = word
            break
    else:
        conf["status"] = "complete"  # recheck: "incomplete" when a shard never arrived


# The environment block: machine, libraries, BLAS, threads, commit. Libraries are looked up by
# version only (importlib.metadata), so collecting it imports no framework; GPU details come from
# torch or CuPy only when they are already imported.

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout (installed: site-packages/mha_conformance)
LIBRARIES = ("numpy", "ml_dtypes", "scipy", "hypothesis", "pytest", "pytest-xdist", "torch",
             "cupy-cuda12x", "cupy", "threadpoolctl", "jax", "jaxlib", "flax", "onnx", "onnxruntime")


def machine_label() -> str:
    """Default label for this machine's run: $MHA_MACHINE, else the host name."""
    return os.environ.get("MHA_MACHINE") or socket.gethostname() or "this-machine"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout, or (None, None) outside git and when installed (the
    directory around site-packages may be the user's repository, whose commit is not ours)."""
    if INSTALLED:
        return None, None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def blas_info() -> list[dict[str, Any]]:
    """BLAS/OpenMP libraries loaded in this process and their thread counts (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "prefix")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


def gpu_info() -> dict[str, Any] | None:
    """Name, driver and runtime of the first CUDA GPU, or None; asks torch if it is imported."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"name": props.name, "memory_bytes": int(props.total_memory),
                "cuda_runtime": torch.version.cuda, "driver": _nvidia_driver(),
                "capability": f"{props.major}.{props.minor}"}
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            if cupy.is_available():
                dev = cupy.cuda.runtime.getDeviceProperties(0)
                return {"name": dev["name"].decode(), "memory_bytes": int(dev["totalGlobalMem"]),
                        "cuda_runtime": str(cupy.cuda.runtime.runtimeGetVersion()),
                        "driver": _nvidia_driver()}
        except Exception:  # a broken driver is reported as no GPU, not a crash
            return None
    return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def thread_counts() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    return {
        "torch": torch.get_num_threads() if torch is not None else None,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "blas": [{"internal_api": b.get("internal_api"), "num_threads": b.get("num_threads")} for b in blas_info()],
    }


def collect() -> dict[str, Any]:
    """The environment block for results.json."""
    commit, dirty = git_state()
    return {
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_info(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES if _version(name)},
        "blas": blas_info(),
        "threads": thread_counts(),
        "commit": commit,
        "dirty": dirty,
    }
