"""Reports: merged results.json, report.md and index.html from synthetic results documents.

The documents are built here from the schema (two machines: a CPU box with a failure, an
unsupported and a skipped backend, and a GPU box with CuPy and torch-cuda speed cells), so
these tests need neither the conformance suite nor the speed harness. They assert facts (the model's
counts, verdicts and cells; the rendered pages read back through tests/report_parse.py: a number in
its row and column, a verdict token in its cell, data verbatim, hostile strings escaped), not the
wording of the report's sentences.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance import results
from reports import cli, model, speed_model
from tests.report_parse import (code_spans, html_head, html_rows, numbers, parse_html, plain, section,
                                tables, words)

REPO = Path(__file__).resolve().parent.parent
HOSTILE = "<script>alert(1)</script>"
NASTY_REASON = "mismatch &<>\"' at row 3"
COUNTEREXAMPLE = "B=1 T=3 d_in=4 d_out=4 n_heads=2 causal=True\nx = [[[1e4, -1e4, 0.5, 0.0], ...]]\n``` fence inside"
REPRO = "python -m conformance --backend torch-mha --check matches_spec --dtype float16 --seed 1234"
CHECKS = [
    ("input_rank_and_dtype", 1, "Step 1 rejects a wrong rank or a non-float dtype with ValueError.\nMore text."),
    ("head_dim_divides", 2, "head_dim = d_out // n_heads; a non-divisor is a ValueError."),
    ("split_matches_index", 5, "split(x)[b,t,h,d] == x[b,t,h*head_dim+d]."),
    ("masked_weights_zero", 8, "Masked positions get weight exactly 0."),
    ("rows_sum_to_one", 8, "Softmax rows sum to 1."),
    ("context_in_hull", 9, "Each context vector lies in the convex hull of the attendable values."),
    ("matches_spec", None, "The output matches the float64 spec within the tolerance."),
    ("causality", None, "Perturbing tokens after t leaves outputs up to t unchanged."),
]
DTYPES = ("float64", "float32", "float16")


def environment(gpu: bool) -> dict:
    blas = [{"internal_api": "openblas", "version": "0.3.27", "num_threads": 8, "threading_layer": "pthreads"}]
    return {"os": "Linux 6.8.0", "cpu": "AMD EPYC 7763 64-Core Processor", "cpu_count": 16,
            "gpu": {"name": "NVIDIA H200", "driver": "550.54.15", "cuda_runtime": "12.4",
                    "memory_bytes": 150 * 2**30, "capability": "9.0"} if gpu else None,
            "python": "3.12.3", "libraries": {"numpy": "2.1.0", "torch": "2.13.0", "scipy": "1.14.1"},
            "blas": blas, "threads": {"torch": 8, "omp_num_threads_env": "8", "blas": []},
            "commit": ("b" if gpu else "a") * 40, "dirty": False}


def backend(name: str, skip: str | None = None, steps: list[int] | None = None) -> dict:
    return {"name": name, "spec": name, "source": f"impls/{name}.py", "capabilities": {},
            "exposed_steps": steps if steps is not None else list(range(1, 13)), "skip_reason": skip}


def record(b: str, check: str, step, dtype: str, outcome: str = "passed", **kw) -> dict:
    r = {"backend": b, "check": check, "step": step, "dtype": dtype, "outcome": outcome, "reason": "",
         "max_error": 1e-7, "tolerance": 1e-5, "counterexample": None, "repro": None, "inputs": None}
    r.update(kw)
    return r


def cpu_conformance() -> dict:
    backends = [backend("numpy"), backend("torch"), backend("torch-sdpa", steps=[]),
                backend("torch-mha", steps=[]), backend(HOSTILE),
                backend("cupy", skip="CuPy not importable: no CUDA driver on this machine")]
    records = []
    for b in backends:
        for name, step, _ in CHECKS:
            for dtype in DTYPES:
                if b["skip_reason"]:
                    records.append(record(b["name"], name, step, dtype, "skipped", reason=b["skip_reason"]))
                elif step is not None and step not in b["exposed_steps"]:
                    records.append(record(b["name"], name, step, dtype, "unsupported",
                                          reason="backend exposes no intermediate steps"))
                elif b["name"] == "torch-mha" and name == "matches_spec" and dtype == "float16":
                    records.append(record(b["name"], name, step, dtype, "failed", reason="max error above tolerance",
                                          max_error=0.0123, tolerance=0.004, counterexample=COUNTEREXAMPLE,
                                          repro=REPRO, inputs="inputs/torch-mha-matches_spec-float16.npz"))
                elif b["name"] == HOSTILE and name == "causality" and dtype == "float32":
                    records.append(record(b["name"], name, step, dtype, "failed", reason=NASTY_REASON,
                                          counterexample=HOSTILE, repro=f"run {HOSTILE}"))
                else:
                    records.append(record(b["name"], name, step, dtype))
    return {"status": "complete", "started": "2025-01-01T00:00:00Z", "finished": "2025-01-01T00:05:00Z",
            "duration_s": 300.0, "profile": "reproducible", "seed": 1234,
            "command": "python -m conformance --profile reproducible", "backends": backends,
            "checks": [{"name": n, "step": s, "doc": d} for n, s, d in CHECKS], "records": records}


def gpu_conformance() -> dict:
    backends = [backend("cupy", steps=[]), backend("torch-cuda", steps=[])]
    records = [record(b["name"], n, s, d, "passed" if s is None else "unsupported")
               for b in backends for n, s, _ in CHECKS for d in ("float32", "float16")]
    return dict(cpu_conformance(), backends=backends, records=records)


def cell(b: str, device: str, dtype: str, T: int, rate: float, conforming=True, peak=None, **kw) -> dict:
    """A speed cell as conformance.speed writes it, timed as if the backend ran at `rate` GFLOP/s."""
    B, d, H = 2, 256, 8
    hd = d // H
    flops = 2 * B * T * d * 3 * d + (4 * B * H * T * T * hd) * (T + 1) / (2 * T) + 2 * B * T * d * d
    rng = np.random.default_rng(T)
    samples = list(flops / (rate * 1e9) * (1 + 0.05 * rng.random(9)))
    med, p25, p75 = (float(np.percentile(samples, q)) for q in (50, 25, 75))
    c = {"backend": b, "device": device, "dtype": dtype, "B": B, "T": T, "d_in": d, "d_out": d,
         "n_heads": H, "causal": True, "first_call_s": 3 * med, "samples_s": samples, "median_s": med,
         "p25_s": p25, "p75_s": p75, "spread": (p75 - p25) / med, "noisy": False, "flops": flops,
         "gflops": flops / med / 1e9, "peak_gflops": peak, "peak_fraction": flops / med / 1e9 / peak if peak else None,
         "peak_memory_bytes": 3 << 20, "memory_method": "tracemalloc", "timer": "perf_counter_ns",
         "conforming": conforming, "error": None, "time_vs_torch": None}
    c.update(kw)
    return c


def peak_section(measured: dict[str, float], library: str, n: int) -> dict:
    ms = [{"device": k.split("/")[0], "library": library, "dtype": k.split("/")[1], "shape": [n, n, n],
           "reps": 3, "best_s": 1.0, "gflops": v, "error": None} for k, v in measured.items()]
    if "cpu/float32" in measured:
        ms.append(dict(ms[0], library="torch", gflops=measured["cpu/float32"] * 0.9))
    head = ms[0]
    return {"gflops": head["gflops"], "device": head["device"], "dtype": head["dtype"], "library": library,
            "shape": [n, n, n], "by_device_dtype": dict(measured), "measurements": ms}


def speed(cells: list[dict], peak: dict, **kw) -> dict:
    sp = {"status": "complete", "started": "2025-01-01T00:06:00Z", "finished": None, "duration_s": 60.0,
          "command": "python -m conformance.speed", "peak": peak, "cells": cells,
          "threads": {"requested": 8, "torch": 8, "omp_num_threads_env": "8",
                      "blas": [{"internal_api": "openblas", "num_threads": 8}]},
          "budget_s": 0.5, "min_samples": 5, "load_average": {"start": 0.2, "now": 0.4},
          "backends": [{"name": n, "spec": n, "device": "cpu", "conforming": True, "conformance_note": ""}
                       for n in dict.fromkeys(c["backend"] for c in cells)], "skipped": []}
    sp.update(kw)
    return sp


TS = (64, 128, 256, 512)


def cpu_doc() -> dict:
    rates = {"numpy": 40.0, "torch": 80.0, "torch-sdpa": 120.0, "torch-mha": 90.0, HOSTILE: 60.0}
    conforming = {"torch-mha": False, HOSTILE: None}
    cells = [cell(b, "cpu", "float32", T, r, conforming=conforming.get(b, True), peak=1500.0)
             for b, r in rates.items() for T in TS]
    cells[0].update(noisy=True, spread=0.35)
    cells.append(cell("numpy", "cpu", "float64", 128, 20.0, peak=700.0))  # no torch at this dtype: ratio n/a
    skipped = [{"backend": "cupy", "reason": "CuPy not importable: no CUDA driver"}] + [
        {"backend": "torch-sdpa", "reason": "dtype float64 not declared", "dtype": "float64", "B": 2, "T": T}
        for T in TS]
    sp = speed(cells, peak_section({"cpu/float32": 1500.0, "cpu/float64": 700.0}, "numpy", 2048), skipped=skipped,
               load_average={"start": 12.5, "now": 3.0})
    return {"schema_version": "1.0", "kind": "mha-conformance-results", "runs": [
        {"machine": "cpu-box", "environment": environment(False), "conformance": cpu_conformance(), "speed": sp}]}


def gpu_doc() -> dict:
    peaks = {"cuda/float32": 50000.0, "cuda/float16": 700000.0}
    cells = [cell(b, "cuda", dt, T, r, peak=peaks[f"cuda/{dt}"], timer="torch.cuda.Event")
             for b, r in (("cupy", 9000.0), ("torch-cuda", 15000.0)) for dt in ("float32", "float16") for T in TS]
    return {"schema_version": "1.0", "kind": "mha-conformance-results", "runs": [
        {"machine": "gpu-box", "environment": environment(True), "conformance": gpu_conformance(),
         "speed": speed(cells, peak_section(peaks, "torch", 8192))}]}


def write(tmp: Path, name: str, doc: dict) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(doc))
    return d


def verdict(shown: str) -> tuple[str, list[str]]:
    """(verdict word, bracketed extras) of a matrix cell's text: "❌ FAIL (float16)" -> ("FAIL", ["float16"]).
    The symbol must be the one that travels with that word."""
    m = re.fullmatch(r"(\S+) (.+?)(?: \((.*)\))?", shown.strip())
    assert m, shown
    assert (m.group(1), m.group(2)) in model.VERDICT.values(), shown
    return m.group(2), m.group(3).split(", ") if m.group(3) else []


def counts(shown: str) -> dict[str, int]:
    """A totals cell as {outcome: records}: "24 passed, 0 failed" -> {"passed": 24, "failed": 0}."""
    return {word: int(n) for n, word in re.findall(r"(\d+) ([A-Za-z][A-Za-z ]*?)(?=,|$|<)", shown.strip())}


def preamble(md: str) -> list[str]:
    """The lines between the title and the first section."""
    return md.split("\n## ")[0].splitlines()[1:]


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merged")
    cpu = write(tmp, "cpu", cpu_doc())
    (cpu / "inputs").mkdir()
    (cpu / "inputs" / "torch-mha-matches_spec-float16.npz").write_bytes(b"npz")
    gpu = write(tmp, "gpu", gpu_doc())
    out = tmp / "out"
    assert cli.main([str(cpu), str(gpu / "results.json"), "--out", str(out), "--title", "Test report"]) == 0
    return out, (out / "report.md").read_text(), (out / "index.html").read_text()


@pytest.fixture(scope="module")
def report(merged):
    return model.build(results.load(merged[0]), "Test report")


LABELS = ["numpy @ cpu-box", "torch @ cpu-box", "torch-sdpa @ cpu-box", "torch-mha @ cpu-box",
          f"{HOSTILE} @ cpu-box", "cupy @ cpu-box", "cupy @ gpu-box", "torch-cuda @ gpu-box"]
FAILED = [("torch-mha @ cpu-box", "matches_spec", "float16"), (f"{HOSTILE} @ cpu-box", "causality", "float32")]


def expected_totals() -> list[dict[str, int]]:
    """Per column, the outcomes counted straight from the input documents."""
    out = []
    for doc in (cpu_doc(), gpu_doc()):
        conf = doc["runs"][0]["conformance"]
        for b in conf["backends"]:
            n = {o: 0 for o in ("passed", "failed", "unsupported", "skipped")}  # --expect's: none here
            for r in conf["records"]:
                n[r["outcome"]] += r["backend"] == b["name"]
            out.append(n)
    return out


def test_merged_results_validate(merged):
    out, _, _ = merged
    doc = results.load(out)
    assert [r["machine"] for r in doc["runs"]] == ["cpu-box", "gpu-box"]
    failed = [r for r in doc["runs"][0]["conformance"]["records"] if r["backend"] == "torch-mha" and r["outcome"] == "failed"]
    # the saved inputs travel with the report, and the record points at the copy
    assert (out / failed[0]["inputs"]).read_bytes() == b"npz"


def test_summary_counts_backends(merged, report):
    _, md, page = merged
    # the facts, from the model: 2 failed records; of 8 columns, 2 fail, 1 is skipped, the other 5 conform
    assert [c.label for c in report.matrix.columns] == LABELS
    assert [(f.label, f.check, f.dtype) for f in report.failures] == FAILED
    assert [c.label for c in report.skipped_backends] == ["cupy @ cpu-box"]
    summary = model.conformance_summary(report)
    assert numbers(summary)[:5] == [2, 5, 8, 2, 1]  # failed records; conform of all; fail; skipped
    # both pages show that summary, in the preamble (before any section)
    assert [plain(ln) for ln in preamble(md) if plain(ln) == summary] == [summary]
    assert parse_html(page).root.one("p", cls="summary").text == summary


def test_markdown_matrix(merged, report):
    _, md, _ = merged
    conf = section(md, "Conformance")
    [table] = conf.tables()
    assert [plain(h) for h in table.head[1:]] == LABELS  # the first column names the checks
    col = {label: i + 1 for i, label in enumerate(LABELS)}
    # group rows (a bold title, nothing else) in step order, each followed by its checks
    # the first row: each backend's verdict over all its records, the model's
    assert plain(table.rows[0][0]) == "verdict"
    assert [plain(c) for c in table.rows[0][1:]] == [model.backend_verdict(report.matrix, i).text
                                                   for i in range(len(LABELS))]
    assert [model.backend_verdict(report.matrix, i).word for i in range(len(LABELS))] == [
        "conforms", "conforms", "conforms", "FAILS", "FAILS", "skipped", "conforms", "conforms"]
    groups: list[tuple[str, list[str]]] = []
    for row in table.rows[1:-1]:
        if row[0].startswith("**") and not any(row[1:]):
            groups.append((plain(row[0]), []))
        else:
            groups[-1][1].append(code_spans(row[0])[0])
    by_step: dict = {}
    for name, step, _ in CHECKS:
        by_step.setdefault(step, []).append(name)
    assert groups == [(model.step_title(s), by_step[s]) for s in (1, 2, 5, 8, 9, None)]
    rows = {code_spans(r[0])[0]: r for r in table.rows if code_spans(r[0])}
    # a check's row shows the first line of its doc, not the rest
    assert "Step 1 rejects a wrong rank or a non-float dtype with ValueError." in plain(rows["input_rank_and_dtype"][0])
    assert "More text" not in plain(rows["input_rank_and_dtype"][0])
    # the verdict in the right row and column, agreeing with the model
    assert verdict(plain(rows["matches_spec"][col["torch-mha @ cpu-box"]])) == ("FAIL", ["float16"])
    assert verdict(plain(rows["causality"][col[f"{HOSTILE} @ cpu-box"]])) == ("FAIL", ["float32"])
    assert verdict(plain(rows["matches_spec"][col["numpy @ cpu-box"]])) == ("pass", [])
    assert verdict(plain(rows["matches_spec"][col["cupy @ cpu-box"]])) == ("skipped", [])
    assert verdict(plain(rows["split_matches_index"][col["torch-mha @ cpu-box"]])) == ("unsupported", [])
    for name, row in rows.items():
        for i, label in enumerate(LABELS):
            cell = report.matrix.cell(name, i)
            assert plain(row[i + 1]) == cell.text and verdict(cell.text)[0] == cell.word, (name, label)
    fails = {(LABELS[i], name) for (name, i), c in report.matrix.cells.items() if c.status == "fail"}
    assert fails == {(label, check) for label, check, _ in FAILED}
    # the totals row: every column's outcome counts, as counted from the input documents
    totals = table.rows[-1]
    assert [counts(plain(c)) for c in totals[1:]] == expected_totals()
    assert counts(plain(totals[col["torch-mha @ cpu-box"]])) == {"passed": 5, "failed": 1, "unsupported": 18,
                                                                  "skipped": 0}
    assert counts(plain(totals[col["cupy @ cpu-box"]]))["skipped"] == 24
    # the skipped backend is listed with its reason (data from the results file)
    [item] = [i for i in conf.items() if code_spans(i)[:1] == ["cupy @ cpu-box"]]
    assert plain(item).endswith("CuPy not importable: no CUDA driver on this machine")


def test_markdown_failures_verbatim(merged, report):
    _, md, _ = merged
    # no finding in these files: each failing backend's records under one "not diagnosed" heading
    groups = section(md, "Failures").subsections()
    assert [(code_spans(g.title), numbers(plain(g.title).rsplit(": ", 1)[1])) for g in groups] == [
        ([label], [1]) for label, _, _ in FAILED]  # one failed record each
    assert all("not diagnosed" in plain(g.title) for g in groups)
    subs = [s for g in groups for s in g.subsections()]
    assert [tuple(code_spans(s.title)) for s in subs] == [(label, check) for label, check, _ in FAILED]
    assert [numbers(s.title)[0] for s in subs] == [1, 2]  # numbered, in matrix column order
    first = subs[0]
    assert "float16" in words(plain(first.title)) and "float32" in words(plain(subs[1].title))  # the failing dtypes
    assert "The output matches the float64 spec within the tolerance." in [plain(i).split(": ", 1)[-1]
                                                                          for i in first.items()]
    # max error, then tolerance, then their ratio
    [err] = [i for i in first.items() if 0.0123 in numbers(i)]
    assert numbers(err) == [0.0123, 0.004, pytest.approx(0.0123 / 0.004, abs=0.005)]
    assert [code_spans(i)[0] for i in first.items() if code_spans(i)] == [report.failures[0].inputs]
    assert report.failures[0].inputs.endswith("inputs/torch-mha-matches_spec-float16.npz")
    blocks = first.fences()
    assert [b.body for b in blocks] == [COUNTEREXAMPLE, REPRO]
    # the fence around a counterexample holding ``` is longer than any run of backticks inside it
    for b in blocks:
        assert len(b.fence) > max((len(r) for r in re.findall(r"`+", b.body)), default=0)
    assert [b.body for b in subs[1].fences()] == [HOSTILE, f"run {HOSTILE}"]


def speed_table(md: str, machine: str, device: str, dtype: str):
    """(heading section, table) of the speed table of that machine, device and dtype."""
    found = [s for s in section(md, "Speed").subsections()
             if {machine, device, dtype} <= set(words(plain(s.title)))]
    assert len(found) == 1, (machine, device, dtype)
    [table] = found[0].tables()
    return found[0], table


def speed_rows(table, T: int) -> dict[str, list[str]]:
    """The rows of one T, by backend name."""
    shape = table.column("Shape")
    backend = table.column("Backend")
    return {plain(r[backend]): r for r in table.rows if f"T={T}" in r[shape].split()}


def test_markdown_speed(merged, report):
    _, md, _ = merged
    assert [(t.machine, t.device, t.dtype) for t in report.speed.tables] == [
        ("cpu-box", "cpu", "float32"), ("cpu-box", "cpu", "float64"),
        ("gpu-box", "cuda", "float32"), ("gpu-box", "cuda", "float16")]
    # the peak each table divides by, and where it was measured
    cpu, table = speed_table(md, "cpu-box", "cpu", "float32")
    peak = cpu.paragraphs()[0]
    assert {1500, 2048, 3, 1350} <= set(numbers(peak)) and "2048×2048×2048" in peak
    source = report.speed.tables[0].peak_source  # the peak's library first, then the other library's best
    assert words(source)[0] == "numpy" and "torch" in words(source) and 1350 in numbers(source)
    assert source in plain(peak)
    _, gpu16 = speed_table(md, "gpu-box", "cuda", "float16")
    gpu16_peak = speed_table(md, "gpu-box", "cuda", "float16")[0].paragraphs()[0]
    assert 700000 in numbers(gpu16_peak) and "8192×8192×8192" in gpu16_peak
    assert words(report.speed.tables[3].peak_source)[0] == "torch"
    # the run's conditions: the CPU box was busy (load 12.5 on 16 cores), the GPU box was not
    notes = section(md, "Speed").items()
    [busy] = [n for n in notes if n.startswith("cpu-box") and 12.5 in numbers(n)]
    [idle] = [n for n in notes if n.startswith("gpu-box") and 0.2 in numbers(n)]
    assert numbers(busy) == [1, 12.5, 3.0] and "BUSY" in busy  # 1-minute load average, at start, at the end
    assert "BUSY" not in idle
    [sdpa] = [n for n in notes if "dtype float64 not declared" in n]
    assert "torch-sdpa" in plain(sdpa) and numbers(plain(sdpa)) == [4]  # four cells not timed, one line
    [cupy] = [n for n in notes if "CuPy not importable: no CUDA driver" in n]
    assert "cupy" in plain(cupy) and numbers(plain(cupy)) == []
    # T=128 on the CPU: ratios to torch, % of peak and memory in their columns
    ratio, pct, mem = table.column("vs torch"), table.column("peak"), table.column("MiB")
    t128 = speed_rows(table, 128)
    assert numbers(t128["torch"][ratio]) == [1.0]
    assert numbers(t128["numpy"][ratio]) == [pytest.approx(2.0, abs=0.005)]
    assert numbers(t128["torch-sdpa"][ratio]) == [pytest.approx(80 / 120, abs=0.005)]
    assert numbers(t128[HOSTILE][ratio]) == [pytest.approx(80 / 60, abs=0.005)]
    numpy_cell = next(c for c in cpu_doc()["runs"][0]["speed"]["cells"] if c["backend"] == "numpy" and c["T"] == 128)
    assert numbers(t128["numpy"][pct]) == [pytest.approx(2.6, abs=0.05)]
    assert numbers(t128["numpy"][pct]) == [pytest.approx(numpy_cell["gflops"] / 1500 * 100, abs=0.05)]
    assert numbers(t128["numpy"][mem]) == [3.0]  # 3 << 20 bytes
    # a non-conforming backend: the verdict, and no figure at all in any timed column
    notes_col = table.column("Notes")
    assert "NOT CONFORMING" in t128["torch-mha"][notes_col]
    timed = [table.column(w) for w in ("Median", "GFLOP/s", "peak", "vs torch", "First call", "MiB")]
    assert all(numbers(t128["torch-mha"][i]) == [] for i in timed), t128["torch-mha"]
    assert all(len(numbers(t128["numpy"][i])) >= 1 for i in timed)
    assert "unverified" in t128[HOSTILE][notes_col] and "NOT CONFORMING" not in t128[HOSTILE][notes_col]
    # only the noisy cell (numpy, T=64, spread 0.35) says so, with its spread in %
    noisy = [(plain(r[table.column("Backend")]), r[notes_col]) for r in table.rows if "noisy" in r[notes_col]]
    assert [(b, numbers(n)) for b, n in noisy] == [("numpy", [35])]
    # float64 on the CPU: no torch cell, so no ratio; its own peak (700) is the denominator
    f64, t64 = speed_table(md, "cpu-box", "cpu", "float64")
    assert report.speed.tables[1].baseline is None and report.speed.tables[1].peak_gflops == 700
    [row] = t64.rows
    assert row[t64.column("vs torch")] == "n/a" and 700 in numbers(f64.paragraphs()[0])
    f64_cell = next(c for c in cpu_doc()["runs"][0]["speed"]["cells"] if c["dtype"] == "float64")
    assert numbers(row[t64.column("peak")]) == [pytest.approx(f64_cell["gflops"] / 700 * 100, abs=0.05)]
    # the GPU tables: ratios against torch-cuda, times in µs, the CUDA event timer
    g32, gpu32 = speed_table(md, "gpu-box", "cuda", "float32")
    assert report.speed.tables[2].baseline == "torch-cuda"
    g128 = speed_rows(gpu32, 128)
    assert numbers(g128["torch-cuda"][gpu32.column("vs torch")]) == [1.0]
    assert numbers(g128["cupy"][gpu32.column("vs torch")]) == [pytest.approx(15000 / 9000, abs=0.005)]
    median = gpu32.column("Median")
    assert "µs" in gpu32.head[median].split()
    cupy_cell = next(c for c in gpu_doc()["runs"][0]["speed"]["cells"]
                     if c["backend"] == "cupy" and c["T"] == 128 and c["dtype"] == "float32")
    assert numbers(g128["cupy"][median])[0] == pytest.approx(cupy_cell["median_s"] * 1e6, rel=0.005)
    assert "torch.cuda.Event" in g32.paragraphs()[0]


def test_html_structure_and_plots(merged, report):
    _, _, page = merged
    p = parse_html(page)
    assert {"environment", "conformance", "failures", "speed", "plots", "failure-1", "failure-2"} <= p.ids
    assert "http://" not in page and "https://" not in page and "link" not in p.tags and "script" not in p.tags
    assert not [r for r in p.refs if not r.startswith("#")]
    svgs = p.root.one("section", id="plots").all("svg")
    assert len(svgs) == 2  # one shape family: time and GFLOP/s
    labels = {g.attrs["data-label"] for svg in svgs for g in svg.all("g", cls="series")}
    for backend_name, machine, dtype in (("numpy", "cpu-box", "float32"), ("torch-cuda", "gpu-box", "float16"),
                                         ("cupy", "gpu-box", "float32"), (HOSTILE, "cpu-box", "float32")):
        assert any(backend_name in lb.split(" @ ")[0] and machine in lb and dtype in lb for lb in labels), (
            backend_name, labels)
    assert not any("torch-mha" in lb for lb in labels)  # non-conforming: no curve
    # the time plot: a line through each series measured at several T (numpy float64: T=128 only),
    # x ticks at the measured T; no peak line
    series = svgs[0].all("g", cls="series")
    assert len(series) == 9 and all(len(g.all("polyline")) <= 1 for g in series)
    lone = [g.attrs["data-label"] for g in series if not g.all("polyline")]
    assert len(lone) == 1 and {"numpy", "float64"} <= set(words(lone[0]))
    assert {64, 128, 256, 512} <= {v for t in svgs[0].all("text") for v in numbers(t.text)}
    assert svgs[0].all("g", cls="peak") == []
    # the GFLOP/s plot: a dashed line per machine's measured peak, labelled with its value
    peaks = [(g.one("title").text, g.one("line")) for g in svgs[1].all("g", cls="peak")]
    assert all(line.attrs.get("stroke-dasharray") for _, line in peaks)
    assert any("gpu-box" in t and "float16" in t and 700000 in numbers(t) for t, _ in peaks)
    assert any("cpu-box" in t and "float64" in t and 700 in numbers(t) for t, _ in peaks)
    # the matrix: the failing cells link to their failure, which holds the data verbatim
    matrix = p.root.one("table", cls="matrix")
    head = [h.text for h in html_head(matrix)]
    assert head[1:] == LABELS
    rows = {r[0].one("code").text: r for r in html_rows(matrix) if r[0].all("code")}
    for n, (label, check, dtype) in enumerate(FAILED, 1):
        td = rows[check][head.index(label)]
        assert "fail" in td.classes and td.one("a").attrs["href"] == f"#failure-{n}"
        assert verdict(td.text) == ("FAIL", [dtype])
        art = p.root.one("article", id=f"failure-{n}")
        assert [c.text for c in art.one("h4").all("code")] == [label, check]
    art = p.root.one("article", id="failure-1")
    assert art.one("pre", cls="counterexample").text == COUNTEREXAMPLE
    assert art.one("pre", cls="repro").text == REPRO
    numpy_td = rows["matches_spec"][head.index("numpy @ cpu-box")]
    assert "pass" in numpy_td.classes and numpy_td.all("a") == [] and verdict(numpy_td.text) == ("pass", [])
    totals = html_rows(matrix)[-1]
    lines = [[c for c in td.children if isinstance(c, str)] for td in totals[1:]]  # one count a line
    assert [counts(", ".join(ln)) for ln in lines] == expected_totals()


def test_html_escapes_hostile_strings(merged):
    _, md, page = merged
    assert HOSTILE not in page and "alert(1)" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "mismatch &amp;&lt;&gt;&quot;&#x27; at row 3" in page
    assert "&lt;script&gt;" in md or f"`{HOSTILE}" in md  # markdown: code span or escaped
    # shown as text where it belongs, never as an element
    p = parse_html(page)
    assert "script" not in p.tags
    assert f"{HOSTILE} @ cpu-box" in [h.text for h in html_head(p.root.one("table", cls="matrix"))]
    assert p.root.one("article", id="failure-2").one("pre", cls="counterexample").text == HOSTILE


def test_partial_run_is_flagged(tmp_path, merged):
    doc = cpu_doc()
    doc["runs"][0]["conformance"]["status"] = "running"
    d = write(tmp_path, "run", doc)
    assert cli.main([str(d)]) == 0
    md = (d / "report.md").read_text()
    [warning] = model.build(results.load(d)).warnings
    assert {"conformance", "cpu-box", "INCOMPLETE"} <= set(words(warning))
    # one loud line above everything else, in each page; a complete run has none
    quoted = [plain(ln.lstrip("> ")) for ln in preamble(md) if ln.startswith(">")]
    assert len(quoted) == 1 and quoted[0].endswith(warning)
    assert not [ln for ln in preamble(merged[1]) if ln.startswith(">")]
    page = parse_html((d / "index.html").read_text()).root
    [div] = page.one("header").all("div", cls="warn")
    assert warning in div.text and page.one("section", id="environment").all("div", cls="warn") == []
    assert parse_html(merged[2]).root.all("div", cls="warn") == []
    # the single input's own results.json is left untouched
    assert json.loads((d / "results.json").read_text()) == doc


@pytest.mark.parametrize("section_run", ["conformance", "speed"])
def test_one_section_only(tmp_path, section_run):
    doc = cpu_doc()
    doc["runs"][0]["speed" if section_run == "conformance" else "conformance"] = None
    d = write(tmp_path, "run", doc)
    assert cli.main([str(d), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    page = parse_html((tmp_path / "o" / "index.html").read_text()).root
    rep = model.build(results.load(tmp_path / "o"))
    missing, present = ("Speed", "Conformance") if section_run == "conformance" else ("Conformance", "Speed")
    assert (rep.speed is None, rep.matrix is None) == ((True, False) if missing == "Speed" else (False, True))
    # the missing section is there, says "not run" and holds no table; the other has its table
    gone, kept = section(md, missing), section(md, present)
    assert gone.tables() == [] and "not run" in gone.text and kept.tables()
    html_gone = page.one("section", id=missing.lower())
    assert html_gone.all("table") == [] and "not run" in html_gone.text
    assert page.one("section", id=present.lower()).all("table")
    if section_run == "speed":
        assert page.all("svg") and section(md, "Failures").subsections() == []  # no conformance: no failure
    else:
        assert page.all("svg") == [] and len(section(md, "Failures").subsections()) == 2


def test_empty_document_renders(tmp_path):
    d = write(tmp_path, "run", results.empty_document())
    assert cli.main([str(d)]) == 0
    md = (d / "report.md").read_text()
    rep = model.build(results.load(d))
    assert rep.machines == [] and rep.matrix is None and rep.speed is None and len(rep.warnings) == 1
    assert [ln for ln in preamble(md) if ln.startswith(">")] and not tables(md.splitlines())
    page = parse_html((d / "index.html").read_text()).root
    assert len(page.all("div", cls="warn")) == 1 and page.all("table") == []


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    (tmp / "notjson.json").write_text("{not json")
    wrong = cpu_doc()
    del wrong["runs"][0]["environment"]["os"]
    (tmp / "wrong.json").write_text(json.dumps(wrong))
    return {"missing": tmp / "nope" / "results.json", "notjson": tmp / "notjson.json", "wrong": tmp / "wrong.json"}


def _json_error(text: str) -> str:
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return e.msg
    raise AssertionError(text)


# what each error names: the parser's own diagnosis, the JSON path of the bad field
@pytest.mark.parametrize("kind,needle", [("missing", None), ("notjson", _json_error("{not json")),
                                         ("wrong", "runs/0/environment")], ids=["missing", "notjson", "wrong"])
def test_cli_bad_input_exits_2(tmp_path, capsys, kind, needle):
    bad = _bad_inputs(tmp_path)[kind]
    good = write(tmp_path, "good", cpu_doc())
    assert cli.main([str(good), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
    assert needle is None or needle in err
    assert not (tmp_path / "o" / "report.md").exists()


def test_cli_bad_argument_exits_2(capsys):
    assert cli.main(["--nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--nope" in err


def test_module_entry_point_exit_status(tmp_path):
    bad = _bad_inputs(tmp_path)["wrong"]
    p = subprocess.run([sys.executable, "-m", "reports", str(bad)], cwd=REPO, capture_output=True, text=True,
                       check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


def test_summarise_cell():
    recs = [record("x", "c", 1, "float32"), record("x", "c", 1, "float16", "failed"),
            record("x", "c", 1, "bfloat16", "failed"), record("x", "c", 1, "float64", "unsupported")]
    fail = model.summarise_cell(recs)
    assert fail.status == "fail" and verdict(fail.text) == ("FAIL", ["float16", "bfloat16"])
    assert dict(p.split(": ") for p in fail.detail.split("; ")) == {
        "float32": "passed", "float16": "failed", "bfloat16": "failed", "float64": "unsupported"}
    # a pass names the dtype it did not test, so "pass" never hides it
    part = model.summarise_cell(recs[:1] + recs[3:])
    assert part.status == "pass" and verdict(part.text)[0] == "pass" and "float64" in verdict(part.text)[1][0]
    assert "float64" not in model.summarise_cell(recs[:1]).text
    assert model.summarise_cell(recs[3:]).status == "unsupported"
    empty = model.summarise_cell([])
    assert empty.status == "none" and verdict(empty.text) == ("not run", [])
    # the same dtype checked twice keeps its worst outcome
    assert model.summarise_cell([recs[0], record("x", "c", 1, "float32", "failed")]).status == "fail"


def test_table_peak():
    pk = peak_section({"cpu/float32": 100.0}, "numpy", 64)
    assert speed_model.table_peak(pk, [], "cpu", "float32")[0] == 100.0
    assert speed_model.table_peak(pk, [], "cpu", "float16") == (None, "")  # another dtype's peak is not borrowed
    assert speed_model.table_peak(pk, [{"peak_gflops": 90.0}], "cpu", "float32")[0] == 90.0  # the cells' denominator wins
    assert speed_model.table_peak({}, [{"gflops": 5.0, "peak_fraction": 0.5}], "cuda:0", "float16")[0] == 10.0
    assert speed_model.table_peak({"gflops": 7, "dtype": "float32", "device": "cpu"}, [], "cpu", "float32")[0] == 7.0


def test_same_machine_twice_is_kept_apart(tmp_path):
    a, b = write(tmp_path, "a", cpu_doc()), write(tmp_path, "b", copy.deepcopy(cpu_doc()))
    assert cli.main([str(a), str(b), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    machines = [r["machine"] for r in results.load(tmp_path / "o")["runs"]]
    assert len(set(machines)) == 2 and machines[0] == "cpu-box"
    [table] = section(md, "Conformance").tables()
    labels = [plain(h) for h in table.head[1:]]
    names = [b["name"] for b in cpu_doc()["runs"][0]["conformance"]["backends"]]
    assert labels == [f"{n} @ {m}" for m in machines for n in names]


def test_screenshot_without_chromium(tmp_path, capsys, monkeypatch):
    from reports import screenshot
    page = tmp_path / "index.html"
    page.write_text("<!DOCTYPE html><title>x</title>")
    monkeypatch.setattr(screenshot, "find_chromium", lambda: None)
    assert screenshot.main([str(page), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install chromium" in err  # the command that makes it valid


def test_repro_follows_copied_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = cpu_doc()
    rec = next(r for r in doc["runs"][0]["conformance"]["records"] if r["outcome"] == "failed")
    rec["repro"] = "python -m conformance.repro run/inputs/case.npz"
    rec["inputs"] = "inputs/case.npz"
    d = write(tmp_path, "run", doc)
    (d / "inputs").mkdir()
    (d / "inputs" / "case.npz").write_bytes(b"npz")
    assert cli.main(["run", "--out", "published/cpu-x"]) == 0
    out = results.load(tmp_path / "published" / "cpu-x")
    rec = next(r for r in out["runs"][0]["conformance"]["records"] if r["outcome"] == "failed")
    assert rec["inputs"] == "inputs/case.npz"
    assert rec["repro"] == "python -m conformance.repro published/cpu-x/inputs/case.npz"
    md = (tmp_path / "published" / "cpu-x" / "report.md").read_text()
    first = section(md, "Failures").subsections()[0]
    assert first.fences()[-1].body == rec["repro"]
