"""Memory layouts: the same values in other strides, made on the NumPy side and read back native.

A layout is made by the suite as a NumPy view (`lay_out`) and handed to the backend's own
`from_numpy`; whether it reached the backend's native array is then measured by reading the
strides back (`native_strides`: NumPy and CuPy `.strides`, torch `.stride()`), never assumed.
An array type without strides (JAX) or a `from_numpy` that compacts its input leaves the layout
"not exercised", with the reason.

The layouts, on an array of two or more axes:
- transposed: storage with the last two axes swapped (column-major in the last two);
- sliced: every other element of a larger buffer in the last axis, from offset 1 (stride 2,
  the gaps NaN or False: a kernel reading them shows it);
- reversed: the second-last axis stored backwards (a negative stride; NumPy only: torch tensors have none);
- broadcast: stride 0 on one axis (`BROADCAST_AXIS` by input): the values are first made equal
  along it (`broadcastable`), the contiguous run gets the same values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LAYOUTS = ("transposed", "sliced", "reversed", "broadcast")

#: The axis a broadcast input repeats along: the batch for x, the padding mask and grad_out
#: (one sequence served to many), the heads for the steps' inputs (K/V expanded over heads, as
#: in grouped-query kernels: PyTorch #191937).
BROADCAST_AXIS = {"x": 0, "key_padding_mask": 0, "grad_out": 0,
                  "q": 1, "k": 1, "v": 1, "attn_scores": 1, "attn_weights": 1}


def broadcastable(a: np.ndarray, axis: int) -> np.ndarray:
    """a with every slice along `axis` equal to the first: values a stride-0 view can hold."""
    return np.repeat(np.take(a, [0], axis=axis), a.shape[axis], axis=axis)


def lay_out(a: np.ndarray, layout: str, axis: int = 0) -> np.ndarray:
    """A view holding a's values in `layout` (`LAYOUTS`; "contiguous": a C-contiguous copy).

    broadcast needs a's values equal along `axis` (`broadcastable`)."""
    if layout == "contiguous":
        return np.ascontiguousarray(a)
    if a.ndim < 2:
        raise ValueError(f"layout {layout!r} needs two axes or more, got shape {a.shape}")
    if layout == "transposed":
        return np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)
    if layout == "sliced":
        buf = np.full((*a.shape[:-1], 2 * a.shape[-1] + 1), False if a.dtype == np.bool_ else np.nan, dtype=a.dtype)
        view = buf[..., 1::2]  # (..., n): stride 2, offset 1
        view[...] = a
        return view
    if layout == "reversed":
        return np.flip(np.ascontiguousarray(np.flip(a, -2)), -2)  # axis -2 stored backwards
    if layout == "broadcast":
        if not np.array_equal(a, broadcastable(a, axis), equal_nan=True):
            raise ValueError(f"broadcast layout: values differ along axis {axis}; make them equal first")
        return np.broadcast_to(np.take(a, [0], axis=axis), a.shape)
    raise ValueError(f"unknown layout {layout!r}; valid: contiguous, {', '.join(LAYOUTS)}")


def element_strides(a: np.ndarray) -> tuple[int, ...]:
    """A NumPy array's strides in elements."""
    return tuple(s // a.itemsize for s in a.strides)


def native_strides(a: Any) -> tuple[int, ...] | None:
    """A native array's strides in elements, read back: torch `.stride()`, NumPy and CuPy
    `.strides` (bytes); None where the type exposes none (JAX arrays)."""
    stride = getattr(a, "stride", None)
    if callable(stride) and hasattr(a, "storage_offset"):  # torch
        return tuple(int(s) for s in stride())
    strides, size = getattr(a, "strides", None), getattr(a, "itemsize", None)
    if isinstance(strides, tuple) and isinstance(size, int) and size > 0:
        return tuple(int(s) // size for s in strides)
    return None


def reached(view: np.ndarray, native: Any) -> str | None:
    """None when the native array holds the view's strides (the layout reached it); else why not."""
    if view.flags.c_contiguous:
        return f"at shape {view.shape} the layout is contiguous"
    got = native_strides(native)
    if got is None:
        return f"{type(native).__module__}.{type(native).__name__} exposes no strides"
    want = element_strides(view)
    # a length-1 axis has no stride that matters (torch and NumPy may give it any)
    if len(got) != len(want) or any(g != w for g, w, n in zip(got, want, view.shape) if n > 1):
        return f"from_numpy gave strides {got}, the layout's are {want}"
    return None
