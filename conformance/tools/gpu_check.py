"""`python -m conformance.gpu_check`: the prepared GPU run (what `nox -s gpu` runs).

On one GPU, in at most about 8 minutes: the default-profile conformance suite on `cupy`,
`torch-cuda` and `torch-sdpa-cuda` in float32, float16 and bfloat16 (where declared), then
the speed sweep on the same backends at d = 1024, H = 16, T = 512 to 8192, all written to
one run directory in the format `python -m reports` reads, labelled with the GPU's name.
Merge it with a CPU run: `python -m reports reports/published/cpu-... <out> --out ...`.

On a machine without a GPU every backend is skipped with its reason and the script still
finishes (the project's tests run it that way), so it is known to work before GPU time is
spent on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from conformance import COMMAND, MODULE
from conformance.usage import OneLineParser, UsageError, add_workers, report, workers_count

BACKENDS = ("cupy", "torch-cuda", "torch-sdpa-cuda")
DTYPES = ("float32", "float16", "bfloat16")
TOKENS = "512,1024,2048,4096,8192"
#: Wall-clock shares of the 8-minute budget; each part is stopped at its share.
LIMITS_S = {"conformance": 240, "speed": 210}


def gpu_label() -> str:
    """A machine label from the GPU's name (e.g. gpu-NVIDIA-H200), else from the host."""
    try:
        import torch  # lazily: only to name the GPU

        if torch.cuda.is_available():
            return "gpu-" + torch.cuda.get_device_name(0).replace(" ", "-")
    except ImportError:
        pass
    from conformance.results import machine_label

    return machine_label()


def run_part(name: str, argv: list[str], limit_s: float) -> int:
    """Run one part as a subprocess with its time limit; its output streams through."""
    print(f"\n== {name}: {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    try:
        code = subprocess.run([sys.executable, *argv], timeout=limit_s).returncode
    except subprocess.TimeoutExpired:
        print(f"== {name}: stopped at its {limit_s:.0f} s limit; results so far are kept (partial)", flush=True)
        return 124
    print(f"== {name}: exit {code} in {time.monotonic() - t0:.1f} s", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=f"{COMMAND} gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/latest", help="run directory (default reports/latest)")
    p.add_argument("--machine", default=None, help="label in reports (default: gpu-<GPU name>)")
    add_workers(p, "4", "pytest-xdist workers for the conformance part")
    p.add_argument("--quick", action="store_true", help="quick profile and a small sweep (a smoke test)")
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        workers_count(args.workers)
    except UsageError as e:
        return report(p.prog, e)
    machine = args.machine or gpu_label()
    os.environ["MHA_MACHINE"] = machine
    print(f"gpu_check: machine {machine!r}, output {args.out}")
    backends = [a for b in BACKENDS for a in ("--backend", b)]
    dtypes = [a for d in DTYPES for a in ("--dtype", d)]
    conf = ["-m", MODULE, *backends, *dtypes, "--profile", "quick" if args.quick else "default",
            "--out", args.out, "--machine", machine, "-n", args.workers]
    speed = ["-m", "conformance.speed", *backends, *dtypes, "--out", args.out, "--machine", machine]
    speed += ["--quick"] if args.quick else ["--d", "1024", "--heads", "16", "--tokens", TOKENS]
    c1 = run_part("conformance", conf, LIMITS_S["conformance"])
    from impls.registry import resolve_all

    reasons = {i.backend.name: i.skip_reason for i in resolve_all(list(BACKENDS))}
    if all(reasons.values()):
        print("\n== speed: skipped, no GPU backend can run here: "
              + "; ".join(f"{k}: {v}" for k, v in reasons.items()), flush=True)
        c2 = 0
    else:
        c2 = run_part("speed", speed, LIMITS_S["speed"])
    print(f"\ngpu_check: conformance exit {c1}, speed exit {c2}; results in {args.out}/results.json")
    # 1 (a check failed) is a finding, not a broken run; anything else is
    return 0 if c1 in (0, 1) and c2 in (0, 1) else 1


if __name__ == "__main__":
    sys.exit(main())
