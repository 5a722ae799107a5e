"""`python -m conformance.tools.size_costs`: measured against modelled CPU seconds of the reference.

The size regime (`conformance.suite.sizes`) budgets each example by `reference_cost_s`, a model
of what drawing its values and computing the golden and the plain reference cost; this tool
measures them on this machine, one BLAS thread, and prints both: the reasons for
`sizes.RATES_NS` and `sizes.RATE_PER_WEIGHT_NS`.
"""

from __future__ import annotations

import time

from threadpoolctl import threadpool_limits

from conformance.suite import memo
from conformance.suite.reference import forward_golden_and_plain
from conformance.suite.sizes import RATES_NS, Sizes, reference_cost_s, weight_entries
from conformance.suite.strategies import case_from
from spec.config import AttentionConfig


def measure(shapes: list[Sizes], dtypes: list[str], repeats: int = 2) -> list[dict]:
    """CPU seconds of an example's values (`case_from`) and forward_golden_and_plain per shape and
    dtype (best of `repeats`, one BLAS thread, nothing remembered), beside what the model estimates."""
    rows = []
    with threadpool_limits(1):
        for s in shapes:
            config = AttentionConfig(d_in=s.d_in, d_out=s.d_out, n_heads=s.H)
            for dtype in dtypes:
                times = []
                for seed in range(repeats):
                    memo.clear()  # a repeat must compute, not find its references
                    t0 = time.process_time()  # CPU time: the machine may be shared
                    forward_golden_and_plain(case_from(config, s.B, s.T, dtype, seed=seed))
                    times.append(time.process_time() - t0)
                rows.append({"sizes": s, "dtype": dtype, "seconds": min(times), "model_s": reference_cost_s(dtype, s)})
    return rows


#: Shapes this tool measures: long T, wide heads, many heads, wide d_in, and large weights at a
#: few tokens (what the rate per weight entry is for).
MEASURED_SHAPES = [Sizes(1, 1025, 1, 1, 1), Sizes(1, 513, 16, 8, 8), Sizes(1, 256, 16, 1, 128),
                   Sizes(1, 64, 1000, 1, 64), Sizes(3, 17, 16, 32, 8), Sizes(2, 300, 130, 17, 8),
                   Sizes(1, 2048, 4, 1, 4), Sizes(4, 128, 70, 9, 24), Sizes(1, 2, 1024, 8, 128),
                   Sizes(6, 9, 1000, 8, 96)]


def main() -> None:
    """Print measured against modelled seconds of the reference (the reasons for RATES_NS)."""
    print(f"{'sizes (B, T, d_in, H, head_dim)':34s} {'weights':>8s} {'dtype':8s} {'measured s':>10s} {'model s':>8s}")
    for r in measure(MEASURED_SHAPES, list(RATES_NS)):
        s = r["sizes"]
        print(f"{str((s.B, s.T, s.d_in, s.H, s.head_dim)):34s} {weight_entries(s):8d} {r['dtype']:8s} "
              f"{r['seconds']:10.3f} {r['model_s']:8.3f}")


if __name__ == "__main__":
    main()
