"""Forward plus backward timing: `python -m conformance.speed --backward` (`nox -s bench -- --backward`).

The forward sweep runs first, as without the flag (conformance/speed/bench.py). Then every
timed backend that declares gradients is timed on the same cells doing one training step's
attention work, `forward_for_grad` then `backward` (then `synchronize`), and each speed cell
of results.json gains `fwd_bwd_median_s`, `fwd_bwd_p25_s`, `fwd_bwd_p75_s`, `fwd_bwd_flops`,
`fwd_bwd_gflops` (reports show them next to the forward's).

Useful FLOPs (README, "Speed"): the backward of a matmul C = A @ B is two matmuls of the same
size, dA = dC @ B^T and dB = A^T @ dC, so the backward's useful work is twice the forward's
matmul FLOPs (projections: dx and dW; attention: dS @ K and dS^T @ Q for dQ, dK, P^T @ dO and
dO @ V^T for dV and dP), and forward plus backward is 3x `useful_flops`. The causal discount
applies to the backward's attention term as to the forward's. A backend that recomputes the
weights in backward (FlashAttention, the NumPy backend) does more work than that and gets no
credit for it. Timing is in this process with perf_counter (one warm-up call, then at least
`min_samples` calls or the budget): less isolated than the forward's worker processes.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, TextIO

import numpy as np

from conformance.results import update_section
from conformance.speed.flops import gflops, useful_flops
from spec.config import AttentionConfig
from spec.params import init_params


def fwd_bwd_flops(B: int, T: int, d_in: int, d_out: int, n_heads: int, causal: bool = True) -> float:
    """Useful FLOPs of forward plus backward: 3x the forward's (the backward is 2x, see the module doc)."""
    return 3.0 * useful_flops(B, T, d_in, d_out, n_heads, causal)


def time_fwd_bwd(backend: Any, shape: tuple, dtype: str, causal: bool, budget_s: float, min_samples: int,
                 seed: int = 0) -> list[float]:
    """Seconds of forward_for_grad + backward + synchronize, warm, at least min_samples of them."""
    B, T, d_in, d_out, H = shape
    config = AttentionConfig(d_in=d_in, d_out=d_out, n_heads=H, causal=causal)
    rng = np.random.default_rng(seed)
    x = backend.from_numpy(rng.standard_normal((B, T, d_in)), dtype)
    g = backend.from_numpy(rng.standard_normal((B, T, d_out)), dtype)
    w = backend.prepare(init_params(config, seed), dtype)

    def step() -> float:
        t = time.perf_counter()
        _, saved = backend.forward_for_grad(x, w, config)
        backend.backward(saved, g)
        backend.synchronize()
        return time.perf_counter() - t

    step()  # warm-up: first-call costs (allocation, kernel choice) are not the steady state
    samples, t0 = [], time.perf_counter()
    while len(samples) < min_samples or time.perf_counter() - t0 < budget_s:
        samples.append(step())
    return samples


def run_backward(plan: Any, out: TextIO | None = None) -> dict[str, Any]:
    """The forward sweep, then forward + backward on its cells for the backends with gradients."""
    from conformance.speed.bench import run

    out = out or sys.stdout
    section = run(plan, out)
    infos = {i.backend.name: i for i in plan.backends}
    print("\nforward + backward (in this process):", file=out)
    for c in section["cells"]:
        info = infos.get(c["backend"])
        if info is None or c.get("error") or not info.backend.capabilities.gradients:
            continue
        shape = (c["B"], c["T"], c["d_in"], c["d_out"], c["n_heads"])
        s = time_fwd_bwd(info.backend, shape, c["dtype"], c["causal"], plan.budget_s, plan.min_samples, plan.seed)
        q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
        flops = fwd_bwd_flops(*shape, causal=c["causal"])
        c.update(fwd_bwd_median_s=statistics.median(s), fwd_bwd_p25_s=q[0], fwd_bwd_p75_s=q[2],
                 fwd_bwd_flops=flops, fwd_bwd_gflops=gflops(flops, statistics.median(s)))
        print(f"  {c['backend']:12s} {c['dtype']:8s} B={c['B']} T={c['T']} d={c['d_in']} H={c['n_heads']}: "
              f"forward {c['median_s'] * 1e3:8.2f} ms, forward+backward {c['fwd_bwd_median_s'] * 1e3:8.2f} ms "
              f"({c['fwd_bwd_gflops']:.1f} useful GFLOP/s)", file=out, flush=True)
    update_section(plan.out_dir / "results.json", plan.machine, None, "speed", section)  # environment kept
    return section
