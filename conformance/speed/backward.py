"""Forward plus backward timing: `python -m conformance.speed --backward` (`nox -s bench -- --backward`).

The forward sweep runs first, as without the flag (conformance/speed/bench.py). Then every
timed backend that declares gradients is timed on the same cells doing one training step's
attention work, `forward_for_grad` then `backward` (then `synchronize`), and each speed cell
of results.json gains `fwd_bwd_median_s`, `fwd_bwd_p25_s`, `fwd_bwd_p75_s`, `fwd_bwd_flops`,
`fwd_bwd_gflops` (reports show them next to the forward's), and beside torch eager
`fwd_bwd_time_vs_torch` with the rounds' `fwd_bwd_round_ratios`, `fwd_bwd_ratio_interval`,
`fwd_bwd_ratio_verdict` and `fwd_bwd_undecided_by`, as the forward's (conformance/speed/verdict.py).

Useful FLOPs (docs/speed.md): the backward of a matmul C = A @ B is two matmuls of the same
size, dA = dC @ B^T and dB = A^T @ dC, so the backward's useful work is twice the forward's
matmul FLOPs (projections: dx and dW; attention: dS @ K and dS^T @ Q for dQ, dK, P^T @ dO and
dO @ V^T for dV and dP), and forward plus backward is 3x `useful_flops`. The causal discount
applies to the backward's attention term as to the forward's. A backend that recomputes the
weights in backward (FlashAttention, the NumPy backend) does more work than that and gets no
credit for it. Timing uses the forward's harness (`conformance.speed.cells`): a worker process
per backend, chunks alternating between them, inputs built anew each round.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from conformance.results import update_section
from conformance.speed.cells import time_cell
from conformance.speed.flops import gflops, useful_flops
from conformance.speed.harness import summarize
from conformance.speed.table import ratio_text
from conformance.speed.verdict import paired

REFERENCE = "torch"  # as the forward sweep (conformance/speed/bench.py)


def fwd_bwd_flops(B: int, T: int, d_in: int, d_out: int, n_heads: int, causal: bool = True) -> float:
    """Useful FLOPs of forward plus backward: 3x the forward's (the backward is 2x, see the module doc)."""
    return 3.0 * useful_flops(B, T, d_in, d_out, n_heads, causal)


def _fill(c: dict[str, Any], t: Any, shape: tuple, causal: bool, out: TextIO, ref: Any = None) -> None:
    """Add one backend's forward + backward figures to its forward speed cell, with its time
    relative to torch eager's (`ref`, timed in the same rounds) and that ratio's verdict."""
    if t.error or not t.samples:
        c.update(fwd_bwd_error=t.error or "no samples")
        print(f"  {c['backend']:12s} {c['dtype']:8s} B={c['B']} T={c['T']}: forward + backward failed: "
              f"{c['fwd_bwd_error']}", file=out, flush=True)
        return
    stats = summarize(t.samples)
    flops = fwd_bwd_flops(*shape, causal=causal)
    c.update(fwd_bwd_median_s=stats["median_s"], fwd_bwd_p25_s=stats["p25_s"], fwd_bwd_p75_s=stats["p75_s"],
             fwd_bwd_flops=flops, fwd_bwd_gflops=gflops(flops, stats["median_s"]))
    vs = ""
    if ref is not None and stats["median_s"]:
        ratio = {"time_vs_torch": stats["median_s"] / summarize(ref.samples)["median_s"]}
        if t is not ref:
            ratio.update(paired(t.rounds, ref.rounds) or {})
            vs = f", t/{REFERENCE} {ratio_text(ratio)}"
        c.update({f"fwd_bwd_{k}": v for k, v in ratio.items()})
    print(f"  {c['backend']:12s} {c['dtype']:8s} B={c['B']} T={c['T']} d={c['d_in']} H={c['n_heads']}: "
          f"forward {c['median_s'] * 1e3:8.2f} ms, forward+backward {c['fwd_bwd_median_s'] * 1e3:8.2f} ms "
          f"({c['fwd_bwd_gflops']:.1f} useful GFLOP/s{vs})", file=out, flush=True)


def run_backward(plan: Any, out: TextIO | None = None) -> dict[str, Any]:
    """The forward sweep, then forward + backward on its cells for the backends with gradients."""
    from conformance.speed.bench import make_units, run

    out = out or sys.stdout
    section = run(plan, out)
    graded = [i for i in plan.backends if getattr(i.backend.capabilities, "gradients", False)]
    print("\nforward + backward (a worker process per backend, as the forward):", file=out)
    by_cell: dict[tuple, list[dict[str, Any]]] = {}
    for c in section["cells"]:
        if not c.get("error") and c["backend"] in {i.backend.name for i in graded}:
            by_cell.setdefault((c["dtype"], c["B"], c["T"], c["d_in"], c["d_out"], c["n_heads"], c["causal"]), []).append(c)
    units = dict(zip((i.backend.name for i in graded), make_units(plan, graded)))
    try:
        for (dtype, *shape, causal), cs in by_cell.items():
            names = [c["backend"] for c in cs]
            reference = REFERENCE if REFERENCE in names else None
            timings = time_cell([units[n] for n in names], tuple(shape), dtype, causal, plan.seed,
                                plan.budget_s, plan.min_samples, plan.max_samples, memory=False, op="prepare_fwd_bwd",
                                reference=reference)
            ref = next((t for t in timings if t.name == reference and t.samples), None)
            for c, t in zip(cs, timings):
                _fill(c, t, tuple(shape), causal, out, ref)
    finally:
        for u in units.values():
            u.close()
    update_section(plan.out_dir / "results.json", plan.machine, None, "speed", section)  # environment kept
    return section
