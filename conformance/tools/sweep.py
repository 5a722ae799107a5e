"""`python -m conformance.sweep`: the standing false-failure sweep.

Runs the suite (`python -m conformance`) many times with fresh random seeds over backends
known to be correct, and counts the runs in which any of them failed. A correct backend must
never fail: one failing run is a false failure to fix in the tolerance model or a check, not
noise. Every failing run keeps its run directory (its results.json and repro bundles) and
the seed that reproduces it.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from conformance import COMMAND, MODULE
from conformance.usage import OneLineParser, UsageError, report

CORRECT = ("numpy", "torch", "torch-sdpa", "torch-mha")


def _failed_records(out: Path) -> list[str]:
    try:
        doc = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as e:
        return [f"results.json unreadable: {e}"]
    return [f"{r['backend']} {r['dtype']} {r['check']}: {str(r.get('reason', ''))[:300]}"
            for run in doc.get("runs", []) for r in run.get("conformance", {}).get("records", [])
            if r.get("outcome") == "failed"]


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=f"{COMMAND} sweep", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30, help="suite runs, each with a fresh random seed (default 30)")
    p.add_argument("--backend", action="append", default=[], help=f"default: {' '.join(CORRECT)}")
    p.add_argument("--profile", default="default", help="Hypothesis profile of each run (default: default)")
    p.add_argument("--seed", action="append", type=int, default=[], help="run these seeds instead of random ones")
    p.add_argument("--out", default="reports/sweep", help="where each run's directory goes (default reports/sweep)")
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        if args.runs < 1:
            raise UsageError(f"--runs must be at least 1, got {args.runs}")
    except UsageError as e:
        return report(p.prog, e)
    seeds = args.seed or [random.SystemRandom().randrange(2**31) for _ in range(args.runs)]
    backends = [a for b in (args.backend or CORRECT) for a in ("--backend", b)]
    t0 = time.perf_counter()
    failing: dict[int, list[str]] = {}
    for i, seed in enumerate(seeds, 1):
        out = Path(args.out) / f"seed{seed}"
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", MODULE, *backends, "--profile", args.profile,
                               "--seed", str(seed), "--out", str(out)], capture_output=True, text=True)
        bad = _failed_records(out)
        if proc.returncode not in (0, 1):
            bad.append(f"suite exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}")
        verdict = "ok" if not bad else f"FAILED ({len(bad)})"
        print(f"[{i}/{len(seeds)}] seed {seed}: {verdict} in {time.perf_counter() - t:.0f} s", flush=True)
        for line in bad:
            print(f"    {line}")
        if bad:
            failing[seed] = bad
    print(f"\n{len(seeds)} runs ({args.profile} profile; {', '.join(args.backend or CORRECT)}) in "
          f"{time.perf_counter() - t0:.0f} s: {len(failing)} with a failure")
    print(f"seeds: {' '.join(map(str, seeds))}")
    if failing:
        print(f"failing seeds (run directories under {args.out}): {' '.join(map(str, failing))}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
