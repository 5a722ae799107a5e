"""Relative speed of backends, timed side by side in one run (PRODUCT.md, "Speed methodology").

Modules, one topic each: `flops` (useful FLOPs of the block), `timers` (host clock or device
events, chosen by device and framework), `harness` (first call apart, interleaved rounds
within a budget, statistics, the harness's own overhead), `memory` (peak memory of one
untimed call), `peak` (this machine's matmul peak, same run), `gate` (conformance read from
results.json), `runner` (a whole run, writing the "speed" section), `table` (terminal
output) and `cli` (`python -m conformance.speed`).
"""

from conformance.speed.flops import gflops, useful_flops

__all__ = ["gflops", "useful_flops"]
