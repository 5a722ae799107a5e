"""Bitwise invariances a backend may promise (`Capabilities.batch_invariant`,
`Capabilities.decode_invariant`), checked bit for bit.

Not asked of every backend: a kernel that picks its tiling or split-K by the batch's shape, as
BLAS does, changes the last bits legitimately, and every built-in backend does (measured in
docs/spec-decisions.md). A backend that promises it, for reproducible serving (the same bits
for a request whatever else is batched with it, as FlashInfer tests), is held to it exactly:
one differing bit fails, and the message says where and by how much.

Decode invariance is the same kind of promise for KV-cache decoding: a prefill of t tokens, then
the rest decoded one token at a time, gives the bits of the full causal forward at those rows
(a serving system that prefills on one path and decodes on another then reproduces a forward's
output). No built-in keeps it: a one-query decode step is a matrix-vector product, the forward a
matrix product (`python -m conformance.tools.bitwise_survey`).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.checks import check


def bit_difference(got: np.ndarray, want: np.ndarray) -> tuple[float, str]:
    """(largest |difference| among differing elements, where and how many): (0.0, "") when every
    element has the same bits (NaN equal to NaN). Both arrays hold the backend's own values."""
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    if same.all():
        return 0.0, ""
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(~same)), same.shape))
    with np.errstate(invalid="ignore"):
        d = np.abs(got - want)[~same]
    worst = float(np.nanmax(d)) if np.isfinite(d).any() else float("inf")
    return worst or float("inf"), (f" ({int((~same).sum())} of {same.size} elements differ; first at {idx}: "
                                   f"{float(got[idx])!r} vs {float(want[idx])!r})")


def _rows(case, idx: list[int]):
    """The case with only batch elements `idx`, in that order."""
    kpm = case.key_padding_mask
    return case.with_(x=case.x[idx], key_padding_mask=None if kpm is None else kpm[idx])


@st.composite
def batch_cases(draw, caps, dtype):
    """A batch of 2 to 4 sequences (sizes from the size regime) and a shuffle of it that moves one."""
    case = draw(cs.cases(caps, dtype, min_batch=2, max_batch=4, large=True, budget_scale=0.2))
    order = draw(st.permutations(range(case.B)).filter(lambda p: list(p) != sorted(p)))
    return case.with_(extra={**case.extra, "order": list(order)})


@check(step=None, strategy=batch_cases, needs=("batch_invariant",))
def batch_invariant_bitwise(run, case):
    """A sequence's output bits do not depend on the rest of its batch: alone, or in the batch shuffled (declared)."""
    full = run.forward(case)  # (B, T, d_out)
    order = case.extra["order"]
    shuffled = run.forward(_rows(case, order))
    run.assert_exact(f"the batch reordered as {order} vs in order", *bit_difference(shuffled, full[order]))
    for b in range(case.B):
        alone = run.forward(_rows(case, [b]))  # (1, T, d_out)
        run.assert_exact(f"sequence {b} alone vs in its batch of {case.B}", *bit_difference(alone, full[b:b + 1]))


@st.composite
def decode_cases(draw, caps, dtype):
    """A causal case (everyday shapes, T >= 2, padded where supported), a prefill of t tokens and
    the rest, at most `cache.MAX_STEPS`, decoded one token at a time."""
    from conformance.suite.checks.cache import chunking  # here: cache's checks register last

    case = draw(cs.cases(caps, dtype, causal=True, min_tokens=2))
    t, chunks = draw(chunking(case.T, one_by_one=True))
    return case.with_(extra={**case.extra, "prefill": t, "chunks": chunks})


@check(step=None, strategy=decode_cases, needs=("kv_cache", "causal", "decode_invariant"))
def decode_invariant_bitwise(run, case):
    """Decoding token by token after a prefill gives the bits of the full causal forward at those rows (declared)."""
    from conformance.suite.checks.cache import decode_outputs

    t = case.extra["prefill"]
    got = decode_outputs(run, case)  # (B, T - t, d_out)
    full = run.forward(case)  # (B, T, d_out)
    run.assert_exact(f"tokens {t}..{case.T - 1} decoded one at a time after a prefill of {t} vs the forward",
                     *bit_difference(got, full[:, t:]))
