"""The size regime: the sizes real attention kernels run at, each example within a cost budget.

Kernels tile T, head_dim and d_in in chunks of 16 to 128, launch grids over B x H, cap a
sequence length and run at head_dim 64 to 256; their bugs live there. A drawn example is
either small (the everyday toy shapes, where shrinking ends) or, with the profile's share
(`conformance.suite.profiles.LARGE_SHARE`), large: it first picks one size class and draws that
class's dimension in its large range, then draws the other dimensions from the small or the
large values that still fit the budget. So a long T comes with small B x H x head_dim and
the reverse. Every class can be drawn at every dtype (a member of each fits every dtype's
budget; `tests/test_sizes.py` checks it), and `representatives` gives fixed cases at each
class's edges that `matches_spec` runs first, so every class is reached on every run.

The budget is the CPU time and memory of drawing one example's values and of
`forward_golden_and_plain` on it, estimated by `reference_cost_s` from measured rates. `python -m conformance.tools.size_costs` measures
that cost again on this machine and prints it beside the model's estimate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable

from hypothesis import strategies as st

from conformance.suite.reused import reused

#: T at every tile edge 2^k - 1, 2^k, 2^k + 1 for k = 4..11, and the longest, 4095 and 4096.
TILE_EDGES = tuple(sorted({2**k + d for k in range(4, 12) for d in (-1, 0, 1)} | {4095, 4096}))
MAX_TOKENS = 4096
HEAD_DIMS = (16, 24, 32, 40, 48, 59, 64, 72, 80, 96, 111, 128, 160, 192, 256)
HEADS = (6, 8, 9, 12, 16, 17, 32)
#: Wide inputs, many not multiples of 8, 16 or 64; any d_in up to 1024 is drawn too.
D_INS = (32, 64, 65, 70, 100, 128, 130, 257, 384, 500, 512, 513, 1000, 1023, 1024)
MAX_D_IN = 1024
#: Batch sizes that put B x H past 32 and 64 with the heads above.
MAX_GRID = 128
#: The small regime (the old strategies' shapes): where shrinking ends.
SMALL = {"H": (1, 4), "head_dim": (1, 8), "d_in": (1, 24)}
SMALL_TOKENS = tuple(t for t in TILE_EDGES if t <= 129)  # 15, 16, 17, ..., 127, 128, 129

#: Cost of `conformance.suite.reference.forward_golden_and_plain` for one example (the golden and
#: every plain-reference run: the spec's order, an ulp-moved run and two other correct
#: orders), in nanoseconds of CPU time per unit: (per multiply-add FLOP of the block's
#: matmuls, per score element and 16 head_dim entries). The second unit is
#: B*H*T*T*(1 + head_dim/16): each score costs a few elementwise passes, and the online-softmax
#: order rescales its (T, head_dim) accumulator once per 16-key block. Measured with `python
#: -m conformance.tools.size_costs` (process time, one BLAS thread, 2-core AMD EPYC shared with other
#: jobs at load 15-20, so CPU times vary by up to 3x run to run), non-negative least squares
#: over 8 shapes from (B, T, d_in, H, head_dim) = (1, 2048, 4, 1, 4) to (1, 512, 1, 2, 128),
#: rounded up. float64's golden runs in long double and float16's plain runs in NumPy's
#: float16 matmul, both without BLAS.
RATES_NS = {
    "float64": (1.7, 85.0),
    "float32": (0.05, 35.0),
    "float16": (6.1, 81.0),
    "bfloat16": (0.05, 65.0),
}
#: Nanoseconds of CPU time per weight entry (3 x d_out x d_in + d_out^2), whatever B x T is: the
#: weights are drawn and rounded, hashed for the references' memo, moved by an ulp and cast for
#: each plain run, and cast again by every matmul in bfloat16 and float16. The two rates above
#: count none of it: B=6, T=9, d_in = d_out = 1536 (torch-mha's d_in follows d_out) was modelled at
#: 0.05 s in float32 and bfloat16 and took 0.5 to 0.7 s. Measured with size_costs on four shapes of
#: B x T <= 54 and d_in 512 to 1536 (the cost above what the other rates model, per weight entry:
#: float64 62-80, float32 33-41, float16 29-33, bfloat16 45-54 ns; 2026-12-07, idle 2-core AMD EPYC),
#: rounded up. float64's golden casts the weights to long double; bfloat16's casts go through ml_dtypes.
RATE_PER_WEIGHT_NS = {"float64": 80.0, "float32": 40.0, "float16": 33.0, "bfloat16": 54.0}
#: Peak bytes per score element of the golden and plain reference together (tracemalloc,
#: T = 2048: 65 in float64, whose golden is long double; 33 otherwise), plus 15 for the
#: check's own (B, T, T) masks and a backend's scores.
BYTES_PER_SCORE = {"float64": 80, "float32": 48, "float16": 48, "bfloat16": 48}
#: Bytes per weight entry: float64 weights, their dtype copy, long double and plain copies.
BYTES_PER_WEIGHT = 64
#: Peak bytes of one large example: 1 GiB keeps two workers well inside this 23 GiB machine
#: shared with other jobs, and still holds T = 4096 in float32 (805 MB by BYTES_PER_SCORE).
#: The time budget of one large example is the profile's (`profiles.LARGE_BUDGET_S`).
BUDGET_BYTES = 1 << 30


@dataclass(frozen=True)
class Sizes:
    B: int
    T: int
    d_in: int
    H: int
    head_dim: int

    @property
    def d_out(self) -> int:
        return self.H * self.head_dim


def matmul_flops(s: Sizes) -> float:
    """2 x multiply-adds of the projections, scores, context and output projection (no causal saving)."""
    return 2 * s.B * s.T * s.d_in * 3 * s.d_out + 4 * s.B * s.H * s.T * s.T * s.head_dim + 2 * s.B * s.T * s.d_out**2


def weight_entries(s: Sizes) -> int:
    """Entries of W_q, W_k, W_v and W_o."""
    return 3 * s.d_out * s.d_in + s.d_out**2


def reference_cost_s(dtype: str, s: Sizes) -> float:
    """Estimated CPU seconds of one example of these sizes: its values and forward_golden_and_plain."""
    per_flop, per_element = RATES_NS[dtype]
    elements = s.B * s.H * s.T * s.T * (1 + s.head_dim / 16)
    return (per_flop * matmul_flops(s) + per_element * elements + RATE_PER_WEIGHT_NS[dtype] * weight_entries(s)) * 1e-9


def memory_bytes(dtype: str, s: Sizes) -> float:
    """Estimated peak bytes: the scores' copies, the weights' copies, and the activations'
    (x, Q, K, V, context and output in float64, long double and D, with ulp-moved copies)."""
    return BYTES_PER_SCORE[dtype] * s.B * s.H * s.T * s.T + BYTES_PER_WEIGHT * weight_entries(s) + 64 * s.B * s.T * (s.d_in + 4 * s.d_out)


def affordable(dtype: str, s: Sizes, budget_s: float) -> bool:
    return reference_cost_s(dtype, s) <= budget_s and memory_bytes(dtype, s) <= BUDGET_BYTES


@functools.lru_cache(maxsize=1 << 16)
def _fits(dtype: str, budget_s: float, max_tokens: int, B: int, T: int, d_in: int, H: int, head_dim: int) -> bool:
    """`_Draw.fits`, remembered: the same few thousand sizes are asked on every draw."""
    return T <= max_tokens and affordable(dtype, Sizes(B=B, T=T, d_in=d_in, H=H, head_dim=head_dim), budget_s)


#: The size classes every dtype draws, and the property that puts an example in each.
SIZE_CLASSES: dict[str, Callable[[Sizes], bool]] = {
    "H>8": lambda s: s.H > 8,
    "head_dim>64": lambda s: s.head_dim > 64,
    "d_in>64, not a multiple of 64": lambda s: s.d_in > 64 and s.d_in % 64 != 0,
    "B*H>32": lambda s: s.B * s.H > 32,
    "T>512": lambda s: s.T > 512,
    "T>512 with H>=8": lambda s: s.T > 512 and s.H >= 8,  # the NumPy backend's blocked path
}


def classes_of(s: Sizes) -> list[str]:
    return [name for name, member in SIZE_CLASSES.items() if member(s)]


class _Draw:
    """The dimensions drawn so far (the rest at their minimum) and what still fits the budget."""

    def __init__(self, dtype: str, budget_s: float, equal_d: bool, min_tokens: int, min_batch: int,
                 max_tokens: int):
        self.dtype, self.budget_s, self.equal_d, self.max_tokens = dtype, budget_s, equal_d, max_tokens
        self.s = Sizes(B=min_batch, T=min_tokens, d_in=1, H=1, head_dim=1)
        self.min = {"B": min_batch, "T": min_tokens}
        self.done: set[str] = set()

    def with_(self, **kw: int) -> Sizes:
        s = replace(self.s, **kw)
        return replace(s, d_in=s.d_out) if self.equal_d else s

    def fits(self, **kw: int) -> bool:
        s = self.s  # the dimensions as plain ints: a draw asks this some 50 times
        dims = {"B": s.B, "T": s.T, "d_in": s.d_in, "H": s.H, "head_dim": s.head_dim, **kw}
        if self.equal_d:
            dims["d_in"] = dims["H"] * dims["head_dim"]
        return _fits(self.dtype, self.budget_s, self.max_tokens, **dims)

    def max_fit(self, dim: str, hi: int) -> int:
        """Largest value of dim in [its minimum, hi] that fits (cost grows with every dimension)."""
        lo = self.min.get(dim, 1)
        if not self.fits(**{dim: lo}):
            return lo - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.fits(**{dim: mid}) else (lo, mid - 1)
        return lo

    def set(self, **kw: int) -> None:
        self.s = self.with_(**kw)
        self.done |= set(kw)


def _values(d: _Draw, dim: str, values, lo: int | None = None, hi: int | None = None,
            keep: Callable[[int], bool] = lambda v: True) -> st.SearchStrategy[int] | None:
    """One of `values` (and any integer in [lo, hi]) that fits the budget; None if none does."""
    top = d.max_fit(dim, max([*values, hi or 0]))
    listed = [v for v in values if v <= top and keep(v)]
    options = [st.sampled_from(listed)] if listed else []
    if lo is not None and min(hi, top) >= lo:
        options.append(st.integers(lo, min(hi, top)).filter(keep))
    return st.one_of(options) if options else None


def _small(d: _Draw, dim: str, max_batch: int, grouped: bool = False) -> st.SearchStrategy[int]:
    """The old strategies' values of dim, cut to what fits the budget next to a large draw;
    `grouped`: H for a backend taking fewer K/V heads, drawn as configs() draws it."""
    lo = d.min.get(dim, 1)
    if dim == "T":
        top = d.max_fit("T", max(SMALL_TOKENS))
        edges = [v for v in SMALL_TOKENS if lo <= v <= top]
        ints = st.integers(lo, max(lo, min(12, top)))
        return st.one_of(ints, st.sampled_from(edges)) if edges else ints
    hi = max(lo, max_batch) if dim == "B" else SMALL[dim][1]
    top = max(lo, min(hi, d.max_fit(dim, hi)))
    if dim == "H" and grouped:  # group size x K/V heads, as configs() draws them, so most can group
        return st.integers(1, min(2, top)).flatmap(lambda g: st.integers(1, max(1, min(4, top // g))).map(g.__mul__))
    return st.integers(lo, top)


def _tokens(draw, d: _Draw, above: int) -> int:
    """T past `above` (a power of two), within the budget: first an octave (2^k, 2^(k+1)], then
    a tile edge of it (2^k + 1, 2^(k+1) - 1, 2^(k+1)) or any T in it. Octaves are equally likely,
    so T past 1024 is drawn as often as T past 512 where the budget allows both."""
    top = d.max_fit("T", MAX_TOKENS)
    k = draw(st.sampled_from([k for k in range(above.bit_length() - 1, 12) if 2**k < top]))
    lo, hi = 2**k + 1, min(2 ** (k + 1), top)
    edges = [t for t in (lo, 2 ** (k + 1) - 1, 2 ** (k + 1)) if t <= hi]
    return draw(st.one_of(st.sampled_from(edges), st.integers(lo, hi)))


def _large(draw, d: _Draw, dim: str) -> int | None:
    """A large value of dim that fits the budget, or None if none does."""
    if dim == "T":
        return _tokens(draw, d, 128) if d.fits(T=129) else None
    if dim == "B":
        options = _values(d, "B", [4, 8, 16], 4, max(4, MAX_GRID // d.s.H))
    elif dim == "H":
        options = _values(d, "H", HEADS)
    elif dim == "head_dim":
        options = _values(d, "head_dim", HEAD_DIMS)
    else:
        options = _values(d, "d_in", D_INS, 25, MAX_D_IN)
    return None if options is None else draw(options)


def _draw_class(draw, d: _Draw, name: str) -> None:
    """Draw the dimensions that put the example in class `name`, within the budget."""
    if name == "H>8":
        d.set(H=draw(_values(d, "H", [h for h in HEADS if h > 8])))
    elif name == "head_dim>64":
        d.set(head_dim=draw(_values(d, "head_dim", [h for h in HEAD_DIMS if h > 64])))
    elif name.startswith("d_in"):
        if d.equal_d:  # d_in is d_out = H * head_dim: one head of a width not a multiple of 64
            d.set(H=1, head_dim=draw(_values(d, "head_dim", [h for h in HEAD_DIMS if h > 64 and h % 64])))
        else:
            d.set(d_in=draw(_values(d, "d_in", [v for v in D_INS if v > 64 and v % 64], 65, MAX_D_IN,
                                     keep=lambda v: v % 64 != 0)))
    elif name == "B*H>32":
        grid_b = lambda h: max(d.min["B"], 32 // h + 1)  # the fewest batch rows past 32 (b, h) pairs
        d.set(H=draw(_values(d, "H", (1, 2, 3, 4) + HEADS, keep=lambda h: d.fits(H=h, B=grid_b(h)))))
        lo = d.min["B"] = grid_b(d.s.H)
        d.set(B=draw(_values(d, "B", [], lo, max(lo, MAX_GRID // d.s.H))))
    else:
        d.min["T"] = max(d.min["T"], 513)
        d.s = replace(d.s, T=d.min["T"])
        if name != "T>512":
            d.set(H=draw(_values(d, "H", [h for h in HEADS if h >= 8])))
        d.set(T=_tokens(draw, d, 512))


#: Per class, the sizes just past the tile, vector and grid edges its bugs live at, which
#: `representatives` turns into fixed cases. The other dimensions come from REP_BASE, or
#: stay at their minimum where REP_BASE does not fit the budget; edges that fit neither
#: (T = 4096 but in thorough float32) are left out, and the longest T the budget allows at
#: the dtype is added (a bug past T = 1024 needs more than one key past it to show; the tile
#: edges between, 1025, 2049, ..., are drawn).
EDGE_VALUES: dict[str, list[dict[str, int]]] = {
    "H>8": [{"H": 9}, {"H": 17}, {"H": 32}],
    "head_dim>64": [{"head_dim": 72}, {"head_dim": 111}, {"head_dim": 256}],
    "d_in>64, not a multiple of 64": [{"d_in": 70}, {"d_in": 130}, {"d_in": 1000}],
    "B*H>32": [{"B": 33, "H": 1}, {"B": 4, "H": 9}, {"B": 3, "H": 32}],
    "T>512": [{"T": 513}, {"T": 4096}],
    "T>512 with H>=8": [{"T": 513, "H": 8}],
}
#: The d_in edges where a backend takes only d_in == d_out (= H * head_dim).
EQUAL_D_IN_EDGES = [{"H": 1, "head_dim": 72}, {"H": 1, "head_dim": 111}, {"H": 5, "head_dim": 40}]
REP_BASE = {"B": 1, "T": 17, "d_in": 16, "H": 2, "head_dim": 8}


def representatives(dtype: str, budget_s: float, equal_d: bool = False, min_tokens: int = 1,
                    min_batch: int = 1, max_tokens: int | None = None, *, first_edges: bool = False,
                    long_past: int = 512) -> list[tuple[str, Sizes]]:
    """(class, sizes) for each edge of EDGE_VALUES that fits at dtype; every class has its
    first edge here when T up to 4096 is allowed. `matches_spec` runs them first, as explicit
    examples, so every class and edge is reached at every dtype on every run.

    The gradient checks, on a sixteenth of the budget, take `first_edges` (each class's first
    edge that fits) and `long_past=256`: T = 257 and the longest T that fits, labelled "T>256"
    (T past 512 does not fit their budget in float16 or float64)."""
    d = _Draw(dtype, budget_s, equal_d, min_tokens, min_batch, max_tokens or MAX_TOKENS)
    member = {**SIZE_CLASSES, f"T>{long_past}": lambda s: s.T > long_past}
    classes = dict(EDGE_VALUES)
    if long_past < 512:
        classes[f"T>{long_past}"] = [{"T": long_past + 1}]
    out = []
    for name, edges in classes.items():
        found = 0
        for edge in EQUAL_D_IN_EDGES if equal_d and name.startswith("d_in") else edges:
            if first_edges and found:
                break
            for base in (REP_BASE, {}):
                kw = {**base, **edge}
                kw["B"], kw["T"] = max(kw.get("B", 1), min_batch), max(kw.get("T", 1), min_tokens)
                if d.fits(**kw) and member[name](d.with_(**kw)):
                    out.append((name, d.with_(**kw)))
                    found += 1
                    break
    longest = d.max_fit("T", MAX_TOKENS)  # the longest T the budget allows, one head of width 1
    if longest > long_past and all(s.T != longest for _, s in out):
        out.append((f"T>{long_past}", d.with_(T=longest)))
    return out


#: Index-width edges (fixed examples only, never drawn): a head count no kernel tiles for
#: (xformers tests H = 300), and more (batch, head) pairs than a CUDA grid's y or z dimension
#: holds (65,535), at tiny T and head_dim so the reference stays cheap: 2049 x 32 = 65,568
#: pairs. A key index past 16 bits is the cache checks' (checks/cache.py, INDEX_WIDTH_KEYS).
INDEX_EDGES: dict[str, dict[str, int]] = {
    "H=300": {"B": 1, "T": 17, "d_in": 16, "H": 300, "head_dim": 1},
    "B*H>65535": {"B": 2049, "T": 2, "d_in": 4, "H": 32, "head_dim": 1},
}


def index_representatives(dtype: str, budget_s: float, equal_d: bool = False, min_tokens: int = 1,
                          min_batch: int = 1) -> list[tuple[str, Sizes]]:
    """(edge, sizes) of each INDEX_EDGES entry that fits budget_s at dtype (d_in = d_out where the
    backend takes only that; T and B at least min_tokens, min_batch)."""
    out = []
    for name, kw in INDEX_EDGES.items():
        s = Sizes(**{**kw, "B": max(kw["B"], min_batch), "T": max(kw["T"], min_tokens)})
        s = replace(s, d_in=s.d_out) if equal_d else s
        if affordable(dtype, s, budget_s):
            out.append((name, s))
    return out


def class_names(dtype: str, budget_s: float, equal_d: bool = False, min_tokens: int = 1,
                min_batch: int = 1, max_tokens: int | None = None) -> list[str]:
    """The classes drawn at dtype: those with a representative that fits the budget."""
    return list(_class_names(dtype, budget_s, equal_d, min_tokens, min_batch, max_tokens))


@functools.lru_cache(maxsize=256)
def _class_names(dtype: str, budget_s: float, equal_d: bool, min_tokens: int, min_batch: int,
                 max_tokens: int | None) -> tuple[str, ...]:
    """`class_names`, remembered (every large draw asks it; 1 ms each)."""
    reps = representatives(dtype, budget_s, equal_d, min_tokens, min_batch, max_tokens)
    return tuple(dict.fromkeys(name for name, _ in reps))


@reused
@st.composite
def sizes(draw, dtype: str, large_share: float, budget_s: float, *, equal_d: bool = False,
          min_tokens: int = 1, min_batch: int = 1, max_batch: int = 3, max_tokens: int | None = None,
          grouped: bool = False) -> Sizes:
    """B, T, d_in, H, head_dim: small, or (with probability large_share) large within budget_s.

    The first draw decides small or large and shrinks to small; a large example shrinks
    towards its class's smallest member and the other dimensions towards their minimum.
    `grouped` (the backend takes fewer K/V heads than query heads): a small H is a group size
    times a K/V head count, so it has a proper divisor as often as in the small strategies.
    """
    d = _Draw(dtype, budget_s, equal_d, min_tokens, min_batch, max_tokens or MAX_TOKENS)
    names = class_names(dtype, budget_s, equal_d, min_tokens, min_batch, max_tokens)
    # ten slots: Hypothesis samples a short list near uniformly (its integers lean to small values)
    large = bool(names) and draw(st.sampled_from(range(10))) >= 10 - round(10 * large_share)
    if large:
        _draw_class(draw, d, draw(st.sampled_from(names)))
    for dim in ("T", "H", "head_dim", "d_in", "B"):
        if dim in d.done or (dim == "d_in" and equal_d):
            continue
        # large examples: each other dimension small or large (half and half), as the budget allows
        big = large and draw(st.booleans())
        value = _large(draw, d, dim) if big else None
        d.set(**{dim: draw(_small(d, dim, max_batch, grouped)) if value is None else value})
    return d.s
