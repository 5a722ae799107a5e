"""Layout mutants: kernels that take a data pointer and assume strides the array does not have.

`PlainBackend.from_numpy` keeps the suite's layouts (`impls.strided`), so these bugs see the
transposed, sliced, reversed and stride-0 inputs that `layouts_match_contiguous` hands them;
every other check passes contiguous arrays, which both read correctly. The bug is planted at
the entry points the checks call with the suite's arrays (forward, forward_for_grad, backward's
grad_out, and steps 7 to 9 called on their own), not on the block's internal views.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.mutants.base import PlainBackend


def read_as_contiguous(a: Any) -> Any:
    """What a kernel given a's first element's address and C-contiguous strides reads: the
    memory a spans, in address order, from that element on; past its end, zeros (garbage)."""
    if not isinstance(a, np.ndarray) or a.flags.c_contiguous or a.size == 0:
        return a
    steps = [s // a.itemsize for s in a.strides]
    lo = sum(min(0, s * (n - 1)) for s, n in zip(steps, a.shape))  # element offsets of a's extent
    hi = sum(max(0, s * (n - 1)) for s, n in zip(steps, a.shape))
    low = a[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in steps)]  # first element: lowest address
    extent = np.lib.stride_tricks.as_strided(low, (hi - lo + 1,), (a.itemsize,))  # the memory a spans
    out = np.zeros(a.size, dtype=a.dtype)
    got = extent[-lo:][:a.size]  # from a's first element on, as if contiguous
    out[:got.size] = got
    return out.reshape(a.shape)


def has_stride0(a: Any) -> bool:
    """A stride-0 (broadcast) axis of length 2 or more."""
    return isinstance(a, np.ndarray) and any(s == 0 and n > 1 for s, n in zip(a.strides, a.shape))


class ReadsAsContiguous(PlainBackend):
    """Every input read from its data pointer as if C-contiguous: a transposed, sliced or reversed view reads the wrong elements.

    What a kernel that takes `data_ptr()` and computes its own strides from the shape does (the
    bug FlashInfer's `test_non_contiguous_*` and PyTorch #133671's non-contiguous grad_out find).
    """

    name = "mutant-reads-as-contiguous"
    _depth = 0  # inside the block: its own views are read correctly

    def misread(self, a: Any) -> Any:
        return read_as_contiguous(a)

    def _entry(self, fn, *args, **kwargs):
        """fn on the misread inputs when called from outside, as given when the block calls it."""
        if self._depth == 0:
            args = tuple(self.misread(a) for a in args)
            kwargs = {k: self.misread(v) for k, v in kwargs.items()}
        self._depth += 1
        try:
            return fn(*args, **kwargs)
        finally:
            self._depth -= 1

    def forward(self, x, weights, config, **kw):
        return self._entry(lambda x, **k: super(ReadsAsContiguous, self).forward(x, weights, config, **k), x, **kw)

    def forward_for_grad(self, x, weights, config, **kw):
        return self._entry(lambda x, **k: super(ReadsAsContiguous, self).forward_for_grad(x, weights, config, **k),
                           x, **kw)

    def backward(self, saved, grad_out):
        return self._entry(lambda g: super(ReadsAsContiguous, self).backward(saved, g), grad_out)

    def attn_scores(self, Q, K):
        return self._entry(super().attn_scores, Q, K)

    def attn_weights(self, attn_scores, config, key_padding_mask=None, dropout_mask=None):
        return self._entry(lambda s, **k: super(ReadsAsContiguous, self).attn_weights(s, config, **k), attn_scores,
                           key_padding_mask=key_padding_mask, dropout_mask=dropout_mask)

    def context(self, attn_weights, V):
        return self._entry(super().context, attn_weights, V)


class BroadcastReadFull(ReadsAsContiguous):
    """A stride-0 (broadcast) input read as a full one: past its one stored row, the kernel reads what follows in memory.

    Strided views are read right; only a broadcast axis is taken at its full stride, as
    PyTorch #191937's memory-efficient kernel did with K/V expanded over heads.
    """

    name = "mutant-broadcast-read-full"
    checks_first = ("layouts_match_contiguous",)  # the checks before it pass: the kill run starts here

    def misread(self, a: Any) -> Any:
        return read_as_contiguous(a) if has_stride0(a) else a


LAYOUT_MUTANTS: list[type[PlainBackend]] = [ReadsAsContiguous, BroadcastReadFull]
