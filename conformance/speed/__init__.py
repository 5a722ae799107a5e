"""Relative speed of backends, timed side by side in one run (docs/speed.md).

Modules, one topic each: `flops` (useful FLOPs of the block), `timers` (host clock or device
events, chosen by device and framework), `harness` (first call apart, chunks of warm calls,
statistics, the harness's own overhead), `worker` (one backend's timing process and the wait
for idle threads), `cells` (one cell across backends: a worker each, chunks alternating),
`memory` (peak memory of one untimed call), `peak` (this machine's matmul peak, same run),
`gate` (conformance read from results.json), `bench` (a whole run, writing the "speed"
section), `verdict` (whether a cell's rounds can tell a backend from torch), `selfcheck`
(`--check-isolation`: harness against each backend alone), `fresh` (an independent
fresh-process timer for "alone"), `table` (terminal output) and `cli` (`python -m conformance.speed`).
The worker also fixes glibc malloc's thresholds in every timing process (`worker.prime_allocator`).
"""

from conformance.speed.flops import gflops, useful_flops

__all__ = ["gflops", "useful_flops"]
