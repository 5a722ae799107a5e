"""`python -m conformance.tools.numpy_ceiling`: how fast any NumPy forward could be here, per sweep cell.

The bench's default sweep (float32, causal, d_in = d_out = 512, H = 8, B x T = 4096) asks of
the NumPy backend that it match PyTorch's fused SDPA. This tool measures the parts that every
NumPy implementation must pay, each at its best on this machine, and adds them up:

    proj   the two projections (one fused (B*T, d_in) @ (d_in, 3 d_out), then (B*T, d_out) @ W_o^T);
    attn   the two attention matmuls, S = q @ k^T and S @ v, over the causal block structure
           (only the key blocks a query block sees), per (b, h) or all heads batched, at query
           blocks of 64 to 512 rows: the fastest layout, at NumPy's BLAS threads or at one BLAS
           thread with perfect scaling to every core, whichever is less;
    exp    np.exp on every visible score, at its measured rate split perfectly over the cores.

Left out (so the sum is a lower bound): the softmax's other passes (max, subtract, sum,
normalise), the scale, every copy and transpose, Python's overhead. A forward built from
NumPy's matmul and exp cannot be faster than `bound`; the last column is PyTorch's SDPA
(`torch.nn.functional.scaled_dot_product_attention`, the whole block) timed in this process,
when torch is installed.

`--backward` bounds forward plus backward the same way, for FlashAttention-2's backward (the
NumPy backend's): the projections three times (each matmul's backward is two of its size), the
attention matmuls 3.5 times (the forward's two; then S again, dP = dO v^T, dV = P^T dO,
dQ = dS k, dK = dS^T q), exp twice (the forward, and P recomputed), and the two elementwise
passes of dS = P * (dP - delta) (NumPy has no fused multiply-subtract) at NumPy's measured
rate for a binary ufunc, over the cores; SDPA's column is then its forward plus autograd's
backward. docs/speed.md records a run.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import numpy as np

D, H = 512, 8
HD = D // H


def best_s(f: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up call, in seconds."""
    f()
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t0)
    return out


def blocks(T: int, bq: int) -> list[tuple[int, int]]:
    """(first query, keys seen) of each causal query block."""
    return [(i0, min(i0 + bq, T)) for i0 in range(0, T, bq)]


def visible_scores(B: int, T: int) -> int:
    """Scores a causal forward must exponentiate: B H T (T + 1) / 2."""
    return B * H * T * (T + 1) // 2


def attn_matmuls_s(B: int, T: int, repeats: int) -> tuple[float, str]:
    """The fastest time of the causal attention matmuls over layouts and block sizes."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, H, T, HD), dtype=np.float32)  # (B, H, T, hd)
    kT = np.ascontiguousarray(rng.standard_normal((B, H, HD, T), dtype=np.float32))  # (B, H, hd, T)
    v = rng.standard_normal((B, H, T, HD), dtype=np.float32)  # (B, H, T, hd)
    ctx = np.empty_like(q)
    found = (float("inf"), "")
    for bq in sorted({min(b, T) for b in (64, 128, 256, 512)}):
        def per_head() -> None:  # 2-D BLAS calls, one (b, h) at a time
            for b in range(B):
                for h in range(H):
                    for i0, kend in blocks(T, bq):
                        s = q[b, h, i0:kend] @ kT[b, h, :, :kend]  # (bq, kend)
                        np.matmul(s, v[b, h, :kend], out=ctx[b, h, i0:kend])  # (bq, hd)

        def batched() -> None:  # every (b, h) in one batched matmul per block
            for i0, kend in blocks(T, bq):
                s = q[..., i0:kend, :] @ kT[..., :kend]  # (B, H, bq, kend)
                np.matmul(s, v[..., :kend, :], out=ctx[..., i0:kend, :])  # (B, H, bq, hd)

        for name, f in (("per head", per_head), ("batched", batched)):
            if name == "per head" and B * H * len(blocks(T, bq)) > 4096:
                continue  # thousands of tiny calls: Python's overhead, never the fastest
            found = min(found, (best_s(f, repeats), f"{name}, blocks of {bq}"))
    return found


def sdpa_s(B: int, T: int, repeats: int, backward: bool) -> float | None:
    """PyTorch's SDPA forward of the whole block (projections included), with autograd's backward
    when asked, or None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=g)
    W_qkv, W_o = torch.randn(3 * D, D, generator=g) / D ** 0.5, torch.randn(D, D, generator=g) / D ** 0.5

    for a in (x, W_qkv, W_o):
        a.requires_grad_(backward)

    def forward() -> None:
        with torch.set_grad_enabled(backward):
            q, k, v = (x @ W_qkv.T).view(B, T, 3, H, HD).permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
            ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
            out = ctx.transpose(1, 2).reshape(B, T, D) @ W_o.T  # (B, T, d_out)
        if backward:
            out.backward(torch.ones_like(out))

    return best_s(forward, repeats)


def ceiling(T: int, repeats: int, backward: bool = False) -> dict[str, Any]:
    """One cell's parts and bound, in seconds (forward plus backward when asked)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    B = 4096 // T
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B * T, D), dtype=np.float32)  # (B*T, d_in)
    W_qkv, W_o = rng.standard_normal((D, 3 * D), dtype=np.float32), rng.standard_normal((D, D), dtype=np.float32)
    proj = best_s(lambda: (x @ W_qkv, x @ W_o), repeats)
    attn, how = attn_matmuls_s(B, T, repeats)
    threads = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    with threadpool_limits(1):
        attn1, how1 = attn_matmuls_s(B, T, repeats)
    cores = len(os.sched_getaffinity(0))
    best_attn, how = min((attn, f"{how}, {threads} BLAS threads"), (attn1 / cores, f"{how1}, 1 BLAS thread / {cores} cores"))
    scores = rng.standard_normal((128, 4096), dtype=np.float32) * 3 - 5  # the softmax's range, below 0
    out = np.empty_like(scores)
    exp_ns = best_s(lambda: np.exp(scores, out=out), 30) / scores.size * 1e9  # 0.6 ms a call: 30, for a steady best
    sub_ns = best_s(lambda: np.subtract(scores, out, out=out), 30) / scores.size * 1e9
    n = visible_scores(B, T)
    exp = n * exp_ns * 1e-9 / cores
    parts = {"proj": proj, "attn": best_attn, "exp": exp, "elementwise": 0.0}
    if backward:
        parts = {"proj": 3 * proj, "attn": 3.5 * best_attn, "exp": 2 * exp, "elementwise": 2 * n * sub_ns * 1e-9 / cores}
    return {"B": B, "T": T, **parts, "attn_blas": attn, "attn_one": attn1 / cores, "how": how,
            "exp_ns": exp_ns, "bound": sum(parts.values()), "sdpa": sdpa_s(B, T, repeats, backward)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.tools.numpy_ceiling", description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096],
                    help="sequence lengths, each a divisor of 4096 from 64 (B = 4096 / T)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per part, the fastest kept (default 5)")
    ap.add_argument("--backward", action="store_true", help="bound forward plus backward (FlashAttention-2's)")
    args = ap.parse_args(argv)
    bad = [T for T in args.T if T < 64 or 4096 % T]
    if bad:
        ap.error(f"--T {bad}: each must divide 4096 and be at least 64 (the sweep's cells: 64, 128, ..., 4096)")
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: must be at least 1")
    what = "forward plus backward" if args.backward else "forward"
    print(f"ms per {what}; bound = proj + attn + exp + elementwise, each at its best (see the module docstring)")
    print(f"{'B':>3} {'T':>5} {'proj':>7} {'attn':>7} {'exp':>6} {'elem':>6} {'bound':>7} {'SDPA':>7}  "
          "attn's fastest layout (forward's attn at NumPy's BLAS threads / at one thread over the cores)")
    for T in args.T:
        c = ceiling(T, args.repeats, args.backward)
        sdpa = "-" if c["sdpa"] is None else f"{c['sdpa'] * 1e3:7.1f}"
        print(f"{c['B']:3d} {T:5d} {c['proj'] * 1e3:7.1f} {c['attn'] * 1e3:7.1f} {c['exp'] * 1e3:6.1f} "
              f"{c['elementwise'] * 1e3:6.1f} {c['bound'] * 1e3:7.1f} {sdpa:>7}  {c['how']} "
              f"({c['attn_blas'] * 1e3:.1f} / {c['attn_one'] * 1e3:.1f} ms; exp {c['exp_ns']:.2f} ns a score, one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
