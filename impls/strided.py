"""A copy that keeps an array's memory layout: what a backend's `from_numpy` uses so that the
suite's layouts (transposed storage, a slice of a larger buffer, negative and zero strides)
reach its native arrays, as `np.array(a, copy=True)` and `a.astype` (both compact a slice and
a stride-0 axis, and flip a negative stride) do not.
"""

from __future__ import annotations

import numpy as np


def copy_keeping_strides(a: np.ndarray, dtype: np.dtype | type | None = None, *,
                         negative: bool = True) -> np.ndarray:
    """A fresh array with a's values in `dtype` (None: a's) and a's strides counted in elements.

    The copy owns a buffer spanning a's extent: a stride-0 axis stays stride 0 (its one row
    stored once), a slice keeps its gaps (NaN in floats, zero otherwise: nothing reads them),
    a negative stride stays negative. `negative=False` (an array type without negative strides,
    as torch's): such an array comes back C-contiguous instead.
    """
    a = np.asarray(a)
    dt = np.dtype(a.dtype if dtype is None else dtype)
    steps = [s // a.itemsize for s in a.strides]
    if (a.size == 0 or any(s * a.itemsize != t for s, t in zip(steps, a.strides))
            or (not negative and any(s < 0 for s in steps)) or a.flags.c_contiguous):
        return np.array(a, dtype=dt, order="C", copy=True)
    lo = sum(min(0, s * (n - 1)) for s, n in zip(steps, a.shape))  # element offsets of the extent
    hi = sum(max(0, s * (n - 1)) for s, n in zip(steps, a.shape))
    fill = np.nan if dt.kind in "fc" else 0
    buf = np.full(hi - lo + 1, fill, dtype=dt)  # the extent, gaps included
    out = np.lib.stride_tricks.as_strided(buf[-lo:], a.shape, [s * dt.itemsize for s in steps])
    out[...] = a  # a stride-0 axis writes one place again and again, with one value
    return out
