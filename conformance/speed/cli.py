"""`python -m conformance.speed`: time backends side by side (docs/speed.md).

Default sweep: T = 64 ... 4096 doubling, d_in = d_out = 512, 8 heads, B*T = 4096 (B = 64 at
T = 64 down to 1 at 4096, so the projections cost the same everywhere and the growing
attention term shows), float32, causal, every available backend. A user's mistake exits 2
with one line on stderr and no traceback. Each backend is timed in its own worker process
(conformance/speed/cells.py); `--check-isolation` compares that with each backend alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from conformance import INSTALLED
from conformance.results import REPO_ROOT, machine_label
from conformance import usage
from conformance.usage import OneLineParser, UsageError
from impls.registry import DEFAULT_BACKENDS, BackendSpecError, resolve, resolve_all
from spec.config import FLOAT_DTYPES, AttentionConfig

PROG = "python -m conformance.speed"
DEFAULT_TOKENS = [64 * 2 ** i for i in range(7)]  # 64 ... 4096
QUICK = {"tokens": [64, 128], "d": 64, "heads": 4, "batch_tokens": 256, "budget": 0.03, "min_samples": 5,
         "peak_size": 512}
# min_samples 8: a quartile from fewer samples is one sample; the default sweep then takes
# about 1.5 minutes on an idle 2-core machine with numpy, torch, torch-sdpa and torch-mha.
FULL = {"tokens": DEFAULT_TOKENS, "d": 512, "heads": 8, "batch_tokens": 4096, "budget": 0.4, "min_samples": 8,
        "peak_size": 2048}


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--backend", action="append", metavar="SPEC",
      help="built-in name or module.path:attr (repeatable); default: every built-in that can run here")
    a("--dtype", action="append", metavar="DTYPE",
      help=f"one of {', '.join(FLOAT_DTYPES)} (repeatable); default float32")
    a("--tokens", metavar="LIST", help="comma-separated token counts T; default 64,128,...,4096")
    a("--shape", action="append", metavar="B,T,d,H",
      help="a user-chosen cell (batch, tokens, d_in = d_out, heads), repeatable; replaces the sweep")
    a("--d", type=str, metavar="D", help="d_in = d_out of the sweep (default 512)")
    a("--heads", type=str, metavar="H", help="heads of the sweep (default 8)")
    a("--batch-tokens", type=str, metavar="N", help="B*T kept constant in the sweep, B = max(1, N // T) (default 4096)")
    a("--non-causal", action="store_true", help="time encoder (non-causal) attention instead of causal")
    a("--budget", type=str, metavar="SECONDS", help="timing budget per cell per backend (default 0.4)")
    a("--min-samples", type=str, metavar="N", help="at least this many warm calls per cell (default 8)")
    a("--quick", action="store_true", help="a tiny sweep (T=64,128, d=64) that finishes in seconds")
    a("--out", metavar="DIR", help="run directory holding results.json (default reports/latest)")
    a("--machine", metavar="LABEL", help="this machine's label in results.json (default $MHA_MACHINE or host name)")
    a("--threads", type=str, metavar="N", help="fix torch's and BLAS's thread counts to N (default: as is, recorded)")
    a("--include-nonconforming", action="store_true",
      help="also time backends that failed conformance (marked nonconforming)")
    a("--check-isolation", action="store_true",
      help="time numpy, torch, torch-sdpa, torch-mha at B=64 T=64, B=4 T=512, B=1 T=4096 (d=512, H=8) in the "
           "harness and alone in fresh processes, print the ratios, exit 1 if any is off by more than 10%%")
    a("--in-process", action="store_true",
      help="time every backend in this process instead of a worker process each (libraries then share it)")
    a("--overhead", action="store_true", help="measure the harness's own cost per call on an empty backend and exit")
    a("--peak-size", type=str, metavar="N", help="size of the square matmul for the CPU peak (default 2048)")
    a("--seed", type=str, metavar="N", help="seed for inputs and weights (default 0)")
    a("--decode", action="store_true",
      help="time one KV-cache decode step at cache lengths 128..8192, B=1 and 8, against the copy "
           "bandwidth (conformance/speed/decode.py); keeps the forward's cells in results.json")
    a("--backward", action="store_true",
      help="also time forward + backward for the backends with gradients (conformance/speed/backward.py)")
    a("--compare", metavar="OLD.json",
      help="after timing, compare each cell with this earlier results file (or its directory); exit 1 if "
           "some cell is slower (conformance/speed/compare.py)")
    a("--current", metavar="NEW.json",
      help="with --compare: compare this results file with OLD instead of timing now")
    a("--slowdown", metavar="FRACTION",
      help="with --compare: a cell is slower past 1 + FRACTION with its quartiles apart (default 0.25)")
    return p


def _int(opt: str, text: str, minimum: int = 1) -> int:
    try:
        v = int(text.strip())
    except ValueError:
        raise UsageError(f"{opt} {text!r}: not an integer; expected an integer >= {minimum}") from None
    if v < minimum:
        raise UsageError(f"{opt} {v}: must be an integer >= {minimum}")
    return v


def _float(opt: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{opt} {text!r}: not a number; expected seconds > 0, e.g. 0.4") from None
    if not v > 0 or v == float("inf"):
        raise UsageError(f"{opt} {text}: must be a finite number of seconds > 0, e.g. 0.4")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"--slowdown {text!r}: not a number; expected a fraction > 0, e.g. 0.25 for 1.25x") from None
    if not 0 < v < float("inf"):
        raise UsageError(f"--slowdown {text}: must be a finite fraction > 0, e.g. 0.25 for 1.25x")
    return v


def parse_tokens(text: str) -> list[int]:
    like = "expected positive integers like 64,128"
    parts = [t for t in text.split(",") if t.strip()]
    if not parts:
        raise UsageError(f"--tokens {text!r}: empty; {like}")
    out = []
    for t in parts:
        try:
            v = int(t)
        except ValueError:
            raise UsageError(f"--tokens {text!r}: {t.strip()!r} is not an integer; {like}") from None
        if v < 1:
            raise UsageError(f"--tokens {text!r}: {v} is not a positive integer; {like}")
        out.append(v)
    return out


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """"B,T,d,H" -> (B, T, d_in, d_out, H), checked as an AttentionConfig would be."""
    parts = text.split(",")
    try:
        B, T, d, H = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--shape {text!r}: expected B,T,d,H, four positive integers (e.g. 8,512,512,8)") from None
    if min(B, T, d, H) < 1:
        raise UsageError(f"--shape {text!r}: B, T, d and H must all be positive integers (e.g. 8,512,512,8)")
    try:
        AttentionConfig(d, d, H)
    except ValueError as e:
        raise UsageError(f"--shape {text!r}: {e}") from None
    return B, T, d, d, H


def _backends(specs: list[str] | None) -> tuple[list, list[dict]]:
    """(runnable BackendInfos, skipped [{backend, reason}]). A user's spec that cannot be
    resolved is an error; a default built-in whose module is missing is only skipped."""
    skipped: list[dict] = []
    if specs:
        infos = resolve_all(specs)  # BackendSpecError: the user's mistake, exit 2
    else:
        infos = []
        for name in DEFAULT_BACKENDS:
            try:
                infos.append(resolve(name))
            except BackendSpecError as e:
                skipped.append({"backend": name, "reason": str(e)})
    runnable = []
    for info in infos:  # an availability() error is not a skip: its worker answers every cell with it
        if info.skip_reason:
            skipped.append({"backend": info.backend.name, "reason": info.skip_reason})
        else:
            runnable.append(info)
    return runnable, skipped


def build_plan(args: argparse.Namespace, argv: list[str]):
    """Validate the options into a bench.Plan (UsageError / BackendSpecError on mistakes)."""
    from conformance.speed.bench import Plan  # lazily: --help and errors stay fast

    base = QUICK if args.quick else FULL
    dtypes = args.dtype or ["float32"]
    for d in dtypes:
        if d not in FLOAT_DTYPES:
            raise UsageError(f"--dtype {d!r}: unknown; valid: {', '.join(FLOAT_DTYPES)}")
    d = _int("--d", args.d) if args.d is not None else base["d"]
    H = _int("--heads", args.heads) if args.heads is not None else base["heads"]
    bt = _int("--batch-tokens", args.batch_tokens) if args.batch_tokens is not None else base["batch_tokens"]
    if args.shape:
        shapes = [parse_shape(s) for s in args.shape]
    elif args.check_isolation and not (args.quick or args.tokens or args.d or args.heads or args.batch_tokens):
        from conformance.speed.selfcheck import CHECK_SHAPES

        shapes = list(CHECK_SHAPES)
    else:
        try:
            AttentionConfig(d, d, H)
        except ValueError as e:
            raise UsageError(f"--d {d} --heads {H}: {e}") from None
        tokens = parse_tokens(args.tokens) if args.tokens is not None else base["tokens"]
        shapes = [(max(1, bt // T), T, d, d, H) for T in tokens]
    budget = _float("--budget", args.budget) if args.budget is not None else base["budget"]
    min_samples = _int("--min-samples", args.min_samples) if args.min_samples is not None else base["min_samples"]
    threads = _int("--threads", args.threads) if args.threads is not None else None
    peak_n = _int("--peak-size", args.peak_size, 16) if args.peak_size is not None else base["peak_size"]
    seed = _int("--seed", args.seed, 0) if args.seed is not None else 0
    # the run's default: reports/latest of the checkout, or of the current directory installed
    out_dir = Path(args.out) if args.out else (Path("reports") if INSTALLED else REPO_ROOT / "reports") / "latest"
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {str(out_dir)!r}: exists and is not a directory")
    machine = args.machine if args.machine is not None else machine_label()
    if not machine.strip():
        raise UsageError("--machine '': the label must not be empty")
    specs = args.backend
    if args.check_isolation and not specs:
        from conformance.speed.selfcheck import CHECK_BACKENDS

        specs = list(CHECK_BACKENDS)
    backends, skipped = _backends(specs)
    return Plan(backends=backends, dtypes=list(dict.fromkeys(dtypes)), shapes=shapes, out_dir=out_dir,
                machine=machine, command=" ".join([PROG, *map(shlex.quote, argv)]), causal=not args.non_causal,
                budget_s=budget, min_samples=min_samples, include_nonconforming=args.include_nonconforming,
                threads=threads, peak_n=peak_n, seed=seed, in_process=args.in_process, skipped=skipped)


def overhead() -> int:
    from conformance.speed.harness import measure_overhead

    r = measure_overhead()
    print(f"harness overhead on an empty backend: {r['overhead_s'] * 1e6:.3f} us per timed call "
          f"(p25 {r['p25_s'] * 1e6:.3f}, p75 {r['p75_s'] * 1e6:.3f}; {r['samples']} calls); "
          f"{r['loop_s'] * 1e6:.3f} us per call including the loop's bookkeeping")
    return 0


def _decode(plan, quick: bool) -> int:
    from conformance.speed.decode import run_decode, write_decode

    decode = run_decode(plan.backends, plan.dtypes, quick=quick, out=sys.stdout, threads=plan.threads)
    if not decode["cells"]:
        print(f"{usage.INVOKED_AS or PROG}: error: no backend declares KV-cache decoding (Capabilities.kv_cache) in "
              f"{', '.join(plan.dtypes)}", file=sys.stderr)
        return 2
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    write_decode(plan.out_dir / "results.json", plan.machine, plan.command, decode)
    print(f"decode: {len(decode['cells'])} cells in {decode['duration_s']:.1f} s -> {plan.out_dir / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
        if args.overhead:
            return overhead()
        if (args.current or args.slowdown) and not args.compare:
            raise UsageError(f"{'--current' if args.current else '--slowdown'} needs --compare OLD.json")
        threshold = _fraction(args.slowdown) if args.slowdown is not None else None
        if args.current:
            return _compare(args.compare, args.current, threshold)
        plan = build_plan(args, argv)
    except (UsageError, BackendSpecError) as e:
        print(f"{usage.INVOKED_AS or PROG}: error: {e}", file=sys.stderr)
        return 2
    from conformance.speed.bench import (  # lazily: keeps argument errors instant
        NothingToTime,
        run,
    )

    if not plan.backends:
        print(f"{usage.INVOKED_AS or PROG}: error: no backend can run here: "
              + "; ".join(f"{s['backend']}: {s['reason']}" for s in plan.skipped), file=sys.stderr)
        return 2
    if args.decode:
        code = _decode(plan, args.quick)
        return _compare(args.compare, plan.out_dir, threshold) if args.compare and code == 0 else code
    try:
        if args.check_isolation:
            from conformance.speed.selfcheck import check

            return 1 if any(r.flagged for r in check(plan, sys.stdout)) else 0
        if args.backward:
            from conformance.speed.backward import run_backward

            run_backward(plan)
        else:
            run(plan)
    except NothingToTime as e:
        print(f"{usage.INVOKED_AS or PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error worth a traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return _compare(args.compare, plan.out_dir, threshold) if args.compare else 0


def _compare(old: str, new: str | Path, threshold: float | None) -> int:
    """`--compare`: each cell of `new` against `old` (conformance/speed/compare.py)."""
    from conformance.results import ResultsError
    from conformance.speed.compare import SLOWDOWN, report

    try:
        return report(Path(old), Path(new), SLOWDOWN if threshold is None else threshold)
    except ResultsError as e:
        print(f"{usage.INVOKED_AS or PROG}: error: --compare: {e}", file=sys.stderr)
        return 2
