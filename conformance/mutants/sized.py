"""Size-keyed mutants: `PlainBackend` with a bug that shows only at the sizes real kernels run at.

Each threshold (T past 256 or 1024, head_dim or d_in past 64, more than 16 heads, more than
32 (batch, head) pairs) lies past every size the old strategies drew (T <= 129, head_dim <= 8,
H <= 4, d_in <= 24, B <= 3) and inside the size regime (`conformance.suite.sizes`), so only its
large examples can kill them. The bugs are those of tiled kernels: a tile, vector or chunk
count rounded down, a grid dimension capped or wrapped, a sequence length silently capped.
"""

from __future__ import annotations

import numpy as np

from conformance.mutants.base import PlainBackend


# -- sizes: bugs that show only at the sizes real kernels run at (conformance.suite.sizes) ---------------
class QueryTileDropped(PlainBackend):
    """Queries in 256-row tiles; past T = 256 the last partial tile is never computed (zero context).

    A tiled kernel whose launch counts T // 256 query tiles instead of ceil(T / 256): right for
    T <= 256 (one tile) and for multiples of 256, wrong for T = 257, 513, 1000, ...
    """

    name = "mutant-query-tile-dropped"
    tile = 256

    def context(self, attn_weights, V):
        out = super().context(attn_weights, V)  # (B, H, Tq, hd)
        Tq = out.shape[-2]
        if Tq > self.tile:
            out[..., Tq // self.tile * self.tile:, :] = 0  # rows of the partial tile: never written
        return out


class HeadDimTail(PlainBackend):
    """Scores summed over head_dim in 64-wide vectors; past head_dim 64 the tail vector is dropped.

    Small head dims take a scalar path; from 65 on, the vectorised path reads head_dim // 64
    full vectors and forgets the remainder (head_dim 72, 80, 96, 111, 160, 192).
    """

    name = "mutant-head-dim-tail"
    width = 64

    def attn_scores(self, Q, K):
        hd = Q.shape[-1]
        if hd > self.width:
            n = hd // self.width * self.width  # whole vectors only
            Q, K = Q[..., :n], K[..., :n]
        return super().attn_scores(Q, K)


class HeadsBeyondGrid(PlainBackend):
    """Heads past 16 never computed: the grid's head dimension is capped at 16 (zero context)."""

    name = "mutant-heads-beyond-grid"
    max_heads = 16

    def context(self, attn_weights, V):
        out = super().context(attn_weights, V)  # (B, H, Tq, hd)
        out[:, self.max_heads:] = 0
        return out


class DInTail(PlainBackend):
    """Q/K/V projection accumulated over d_in in 64-wide chunks; past d_in 64 the tail chunk is dropped.

    As head_dim's tail, but in the input projection: d_in = 70, 130, 1000 lose their last
    d_in % 64 features; multiples of 64 and d_in <= 64 are right.
    """

    name = "mutant-d-in-tail"
    chunk = 64

    def project_qkv(self, x, weights):
        d_in = x.shape[-1]
        if d_in > self.chunk:
            n = d_in // self.chunk * self.chunk
            x = np.ascontiguousarray(x[..., :n])
            weights = weights.map(lambda a: a[:, :n] if a.ndim == 2 and a.shape[1] == d_in else a)
        return super().project_qkv(x, weights)


class MaxSeqlen(PlainBackend):
    """Keys past position 1024 silently ignored: a maximum sequence length applied without an error.

    As a kernel with a fixed 1024-entry key buffer: queries past 1024 attend only to the first
    1024 keys, non-causal queries lose the later keys.
    """

    name = "mutant-max-seqlen"
    max_seqlen = 1024

    def mask(self, config, B, Tq, Tk, key_padding_mask):
        masked = super().mask(config, B, Tq, Tk, key_padding_mask)  # (B, 1, Tq, Tk)
        if Tk > self.max_seqlen:
            masked = masked.copy()
            masked[..., self.max_seqlen:] = True
        return masked


class GridOverflow(PlainBackend):
    """(batch, head) pairs past 32 wrap around: pair p gets the context of pair p mod 32.

    A grid index kept in 5 bits (or a launch of 32 blocks indexed modulo 32): right while
    B x H <= 32, wrong at B x H = 33, 36, 64, 68, ...
    """

    name = "mutant-bh-grid-overflow"
    grid = 32

    def context(self, attn_weights, V):
        out = super().context(attn_weights, V)  # (B, H, Tq, hd)
        B, H, Tq, hd = out.shape
        flat = out.reshape(B * H, Tq, hd)  # one row per (batch, head) pair
        flat[self.grid:] = flat[np.arange(self.grid, B * H) % self.grid]
        return flat.reshape(B, H, Tq, hd)


#: The mutants whose bugs show only at sizes past the old strategies' (T <= 129, head_dim <= 8,
#: H <= 4, d_in <= 24, B <= 3): each threshold lies inside the size regime's range.
SIZE_MUTANTS: list[type[PlainBackend]] = [QueryTileDropped, HeadDimTail, HeadsBeyondGrid, DInTail, MaxSeqlen,
                                          GridOverflow]
