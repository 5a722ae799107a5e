"""Can a cell's figure separate a backend from torch? Its rounds, read as paired measurements.

Within a cell every backend runs one chunk per round, the rounds interleaved
(conformance.speed.cells), so one round's chunks of two backends ran within a second or two of
each other, under the same load. Each round r gives one paired ratio
median(chunk r of X) / median(chunk r of torch): load that changes between rounds moves both
chunks of a round alike and cancels, load that hits one backend's chunk and not the other's
shows as rounds that disagree. The cell's interval for the ratio is the distribution-free
confidence interval of the median of the per-round ratios (order statistics k and n + 1 - k,
the largest k whose coverage is at least `CONFIDENCE`; with 3 rounds the lowest and highest).

Verdicts: "level" (the interval within 1 -/+ `LEVEL`: the harness vouches for no finer
difference, the isolation check's own limit), else "faster" / "slower" (the whole interval
below / above 1), else "undecided" (the rounds disagree about which is faster, by more than
`LEVEL`). A cell is undecided as well when either backend's samples spread over more than
`SPREAD_LIMIT` ((p75 - p25) / median within a round, the median over its rounds; drift between
rounds is the pairs' to cancel): its calls then took widely different times, as when other
processes hold the cores a call's threads wait for (at a load average of 11 to 20, numpy at
B=4 T=512 spread 47% to 348%, all rounds pooled, and its rounds agreed on ratios from 0.8 to
7.4 in different runs; torch's spread 8% to 39%). An undecided cell gets more
rounds, up to `MAX_ROUNDS` (cells.time_cell); one still undecided then is printed as an
interval, not a ratio.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

CONFIDENCE = 0.75  # of the median's interval; 3 rounds reach exactly this, 9 rounds 82%
LEVEL = 0.10  # an interval inside 1 -/+ 10% calls the two level (the isolation check's own limit)
MAX_ROUNDS = 9  # an undecided cell pools rounds up to 3x its budget, then says it stays undecided
# Spreads on an idle 2-core machine reached 23% (the published sweep) and 41% (issue #33's
# machine, alone); calls that spread over more than half their median are not one figure.
SPREAD_LIMIT = 0.5
VERDICTS = ("faster", "slower", "level", "undecided")


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free interval of the median: sorted values k and n + 1 - k (1-based), the
    largest k with P(k <= Binomial(n, 1/2) <= n - k) >= confidence; (min, max) when none is."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        raise ValueError("median_interval of no values: expected at least one")
    best = 1
    for k in range(1, n // 2 + 1):
        tail = sum(math.comb(n, i) for i in range(k)) / 2 ** n  # P(Binomial(n, 1/2) < k)
        if 1 - 2 * tail >= confidence:
            best = k
    return v[best - 1], v[n - best]


def round_medians(rounds: list[list[float]]) -> list[float | None]:
    """Median of each round's samples (None for a round without samples)."""
    return [statistics.median(r) if r else None for r in rounds]


def judge(lo: float, hi: float, level: float = LEVEL) -> str:
    """The verdict of a ratio interval [lo, hi] (this backend's time / torch's)."""
    if lo >= 1 - level and hi <= 1 + level:  # first: the bench vouches for no finer difference
        return "level"
    if hi < 1:
        return "faster"
    if lo > 1:
        return "slower"
    return "undecided"


def spread(samples: list[float]) -> float:
    """(p75 - p25) / median of the samples (0 for none)."""
    if not samples:
        return 0.0
    q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else [samples[0]] * 3
    return (q[2] - q[0]) / q[1] if q[1] > 0 else 0.0


def round_spread(rounds: list[list[float]]) -> float:
    """The median over rounds of each round's spread: the calls' dispersion under steady
    conditions, free of the drift between rounds."""
    return statistics.median(spread(r) for r in rounds) if rounds else 0.0


def paired(rounds: list[list[float]], ref_rounds: list[list[float]]) -> dict[str, Any] | None:
    """Per-round ratios of a backend to the reference, their interval and verdict, and what
    made it undecided ("rounds" or "spread"); None when no round has samples on both sides."""
    mine, ref = round_medians(rounds), round_medians(ref_rounds)
    ratios = [a / b for a, b in zip(mine, ref) if a is not None and b]
    if not ratios:
        return None
    lo, hi = median_interval(ratios)
    verdict, why = judge(lo, hi), None
    if verdict == "undecided":
        why = "rounds"
    elif max(round_spread(rounds), round_spread(ref_rounds)) > SPREAD_LIMIT:
        verdict, why = "undecided", "spread"
    return {"round_ratios": [round(r, 4) for r in ratios], "ratio_interval": [lo, hi],
            "ratio_verdict": verdict, "undecided_by": why}


def undecided(rounds: dict[str, list[list[float]]], reference: str) -> list[str]:
    """Names whose ratio to `reference` is undecided by the rounds so far (none without it)."""
    ref = rounds.get(reference)
    if not ref:
        return []
    out = []
    for name, rs in rounds.items():
        p = paired(rs, ref) if name != reference else None
        if p is not None and p["ratio_verdict"] == "undecided":
            out.append(name)
    return out
