"""One machine in two Python environments merges as one machine (conformance.same_machine)."""

from __future__ import annotations

import copy

from conformance import results
from reports import model


def _env(python: str, cpu: str = "AMD EPYC 7763", libs: dict | None = None) -> dict:
    return {"os": "Linux 6.8.0", "cpu": cpu, "cpu_count": 2, "gpu": None, "python": python,
            "libraries": libs or {"numpy": "2.4.6"}, "threads": {}, "commit": "a" * 40, "dirty": False}


def _conf(ran: list[str], skipped: list[str], seed: int, command: str) -> dict:
    backends = [{"name": n, "spec": n, "source": "builtin", "capabilities": {}, "exposed_steps": [],
                 "skip_reason": "not installed" if n in skipped else None, "versions": {n: "1.0"}}
                for n in ran + skipped]
    records = [{"backend": n, "check": "matches_spec", "step": None, "dtype": d,
                "outcome": "skipped" if n in skipped else "passed", "reason": "not installed" if n in skipped else ""}
               for n in ran + skipped for d in ("float64", "float32")]
    return {"status": "complete", "started": f"2026-12-0{seed}T00:00:00+00:00",
            "finished": f"2026-12-0{seed}T00:01:00+00:00", "duration_s": 60.0, "profile": "default", "seed": seed,
            "command": command, "backends": backends,
            "checks": [{"name": "matches_spec", "step": None, "doc": "d"}], "records": records,
            "dtypes": ["float64", "float32"], "planned": len(records), "missing": [],
            "plan": {"id": f"p{seed}", "shard": 1, "shards": 1, "total": len(records)}}


def _doc(env: dict, conf: dict, machine: str = "vm") -> dict:
    return {"schema_version": "1.0", "kind": "mha-conformance-results",
            "runs": [{"machine": machine, "environment": env, "conformance": conf, "speed": None}]}


def test_two_environments_of_one_machine_are_one_run():
    a = _doc(_env("3.11.9"), _conf(["numpy", "torch"], ["jax"], 1, "python -m conformance"))
    b = _doc(_env("3.12.3", libs={"jax": "0.7"}), _conf(["jax"], ["numpy"], 2, "python -m conformance -b jax -b numpy"))
    merged = results.merge([copy.deepcopy(a), copy.deepcopy(b)])
    results.validate(merged)
    assert [r["machine"] for r in merged["runs"]] == ["vm"]
    run = merged["runs"][0]
    conf = run["conformance"]
    # each backend from the environment where it ran, its skip elsewhere dropped
    assert [x["name"] for x in conf["backends"]] == ["numpy", "torch", "jax"]
    assert all(x["skip_reason"] is None for x in conf["backends"])
    outcomes = {(r["backend"], r["dtype"]): r["outcome"] for r in conf["records"]}
    assert len(conf["records"]) == len(outcomes) == 6 and set(outcomes.values()) == {"passed"}
    assert conf["planned"] == 6 and conf["status"] == "complete" and conf["seed"] is None
    assert conf["command"] == "python -m conformance ; python -m conformance -b jax -b numpy"
    # the environments stay as details
    assert [e["python"] for e in run["environments"]] == ["3.11.9", "3.12.3"]
    assert run["environment"]["python"] == "3.11.9"
    report = model.build(merged, "t")
    assert report.machines == ["vm"]


def test_the_same_label_on_other_hardware_is_another_machine():
    a = _doc(_env("3.11.9"), _conf(["numpy"], [], 1, "c"))
    b = _doc(_env("3.11.9", cpu="Intel Xeon"), _conf(["jax"], [], 2, "c"))
    merged = results.merge([a, b])
    assert [r["machine"] for r in merged["runs"]] == ["vm", "vm (2)"]


def test_a_backend_run_in_both_environments_keeps_both_runs():
    a = _doc(_env("3.11.9"), _conf(["numpy"], [], 1, "c"))
    b = _doc(_env("3.12.3"), _conf(["numpy", "jax"], [], 2, "c"))
    merged = results.merge([a, b])
    assert [r["machine"] for r in merged["runs"]] == ["vm", "vm (2)"]  # neither numpy result is dropped
    assert sum(len(r["conformance"]["records"]) for r in merged["runs"]) == 6


def test_finding_ids_stay_unique_and_status_is_the_worst():
    ca = _conf(["numpy"], [], 1, "c")
    cb = _conf(["jax"], [], 2, "c")
    cb["status"] = "interrupted"  # a status the records cannot recount (completeness is recounted from the plan)
    for conf, name in ((ca, "numpy"), (cb, "jax")):
        conf["findings"] = [{"id": "F1", "backend": name}]
        conf["records"][0].update(outcome="failed", finding="F1")
    merged = results.merge([_doc(_env("3.11.9"), ca), _doc(_env("3.12.3"), cb)])
    conf = merged["runs"][0]["conformance"]
    assert [f["id"] for f in conf["findings"]] == ["F1", "F1-2"]
    by = {r["backend"]: r["finding"] for r in conf["records"] if r.get("finding")}
    assert by == {"numpy": "F1", "jax": "F1-2"}
    assert conf["status"] == "interrupted"
