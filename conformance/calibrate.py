"""`python -m conformance.calibrate`: measure the numbers behind the tolerance model.

For each correct backend and dtype, runs forward on random cases drawn like the suite's and
prints the distribution of err(backend) / err(plain reference in D) and of err(backend) /
FLOOR[D]. K in conformance/tolerance.py must sit above the worst ratio seen here with a
margin; the floors must sit above what correct backends need when the plain reference is
exact. Mutant kills (`nox -s mutants`) show the other side: the same numbers are tight enough.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from conformance.reference import forward_golden_and_plain
from conformance.runner import Runner
from conformance.strategies import EDGE_TOKENS, case_from, value_scales
from conformance.tolerance import FLOOR, K, compare
from impls.registry import BackendSpecError, resolve_all
from spec.config import AttentionConfig


def random_cases(caps, dtype: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x_scales, param_scales = value_scales(dtype)
    for _ in range(n):
        H, hd = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        d_out = H * hd
        d_in = d_out if caps.d_in_equals_d_out else int(rng.integers(1, 25))
        causal = bool(rng.integers(2)) if caps.causal and caps.non_causal else caps.causal
        cfg = AttentionConfig(d_in=d_in, d_out=d_out, n_heads=H, causal=causal,
                              qkv_bias=bool(rng.integers(2)) and caps.qkv_bias)
        T = int(rng.choice(list(range(1, 13)) + list(EDGE_TOKENS)))
        yield case_from(cfg, int(rng.integers(1, 4)), T, dtype, int(rng.integers(2**31)),
                        float(rng.choice(x_scales)), float(rng.choice(param_scales)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--backend", action="append", default=[], help="default: numpy torch torch-sdpa torch-mha")
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        infos = resolve_all(args.backend or ["numpy", "torch", "torch-sdpa", "torch-mha"])
    except BackendSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"K = {K:g}; floors: " + ", ".join(f"{d} {f:.3g}" for d, f in FLOOR.items()))
    print(f"{'backend':12s} {'dtype':9s} {'cases':>5s} {'ratio p50':>10s} {'p99':>8s} {'max':>8s} "
          f"{'err/floor max':>14s} {'fail':>5s}")
    for info in infos:
        if info.skip_reason:
            print(f"{info.backend.name:12s} skipped: {info.skip_reason}")
            continue
        for dtype in info.backend.capabilities.dtypes:
            run = Runner(info.backend, dtype)
            ratios, floors, fails = [], [], 0
            for case in random_cases(info.backend.capabilities, dtype, args.cases, args.seed):
                got = run.forward(case)
                golden, plain = forward_golden_and_plain(case)
                c = compare(got, golden, plain, dtype)
                fails += not c.ok
                if c.plain_err > 0:
                    ratios.append(c.err / c.plain_err)
                floors.append(c.err / FLOOR[dtype])
            r = np.array(ratios) if ratios else np.zeros(1)
            print(f"{info.backend.name:12s} {dtype:9s} {args.cases:5d} {np.median(r):10.3g} "
                  f"{np.percentile(r, 99):8.3g} {r.max():8.3g} {max(floors):14.3g} {fails:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
