"""Which keys each query may see: the attention mask, written once for the spec and the suite.

Every mask the spec and the suite's references use is built here (`visible`), so a new kind
of mask is one argument in one place. Queries and keys may differ in length (Tq <= Tk,
KV-cache decoding): the queries are then the LAST Tq positions, so query i sits at position
p = i + Tk - Tq and the causal mask is aligned bottom-right.

The sliding window is `(left, right)`, counted in key positions: the query at position p sees
keys j with p - left <= j <= p + right. `left = w` covers w + 1 keys (the w before and itself),
FlashAttention's `window_size=(w, 0)`; causal attention is `right = 0`. A window alone never
empties a row: the query's own position is always inside it.

A key a query may not see contributes nothing to that query's output, even when its input is
NaN or +-inf: the spec applies the mask by selection (step 8 puts -inf in the masked scores with
`np.where`; step 9 sums only the values whose weight is not 0), never by arithmetic that
multiplies a masked term by 0 or adds a finite sentinel, which a NaN survives.
"""

from __future__ import annotations

import numpy as np


def causal_mask(Tq: int, Tk: int) -> np.ndarray:
    """True where query i must NOT see key j: j > i + (Tk - Tq).

    Aligned bottom-right, so with Tq < Tk (KV-cache decoding) the queries are the last
    positions; with Tq == Tk this is the source document's `triu(ones, diagonal=1)`.
    """
    return np.triu(np.ones((Tq, Tk), dtype=bool), k=1 + Tk - Tq)  # (Tq, Tk)


def check_window(window: object) -> tuple[int, int] | None:
    """The window as a (left, right) tuple of ints >= 0, or None; ValueError naming the bad value."""
    if window is None:
        return None
    ok = (isinstance(window, (tuple, list)) and len(window) == 2
          and all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 0 for w in window))
    if not ok:
        raise ValueError(f"window={window!r}: must be (left, right), two ints >= 0 (query at position p sees "
                         f"keys p - left .. p + right; left = w covers w + 1 keys), or None")
    return int(window[0]), int(window[1])


def window_mask(Tq: int, Tk: int, window: tuple[int, int]) -> np.ndarray:
    """True where key j lies outside query i's window: j < p - left or j > p + right, p = i + Tk - Tq."""
    left, right = check_window(window)
    pos = np.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, 1): each query's position among the keys
    j = np.arange(Tk)[None, :]  # (1, Tk)
    return (j < pos - left) | (j > pos + right)  # (Tq, Tk)


def visible(Tq: int, Tk: int, causal: bool, key_padding_mask: np.ndarray | None = None,
            window: tuple[int, int] | None = None) -> np.ndarray:
    """Bool [B or 1, 1, Tq, Tk]: True where query i may attend to key j.

    `causal`: key j no later than the query's position p = i + Tk - Tq. `key_padding_mask` [B, Tk]
    (True = may attend) masks whole keys per batch row; the result then has B rows, else one
    (it broadcasts over the batch and the heads). `window` (left, right): also only keys
    p - left <= j <= p + right (see the module docstring); None: no window.
    """
    ok = np.ones((1, 1, Tq, Tk), dtype=bool)  # (1, 1, Tq, Tk)
    if causal:
        ok &= ~causal_mask(Tq, Tk)
    if window is not None:
        ok &= ~window_mask(Tq, Tk, window)
    if key_padding_mask is not None:
        ok = ok & np.asarray(key_padding_mask, dtype=bool)[:, None, None, :]  # (B, 1, Tq, Tk)
    return ok


def softcap(scaled: np.ndarray, c: float | None) -> np.ndarray:
    """Gemma 2's logit softcap on the scaled scores, c * tanh(s / c), in their dtype; None: unchanged."""
    if c is None:
        return scaled
    dt = scaled.dtype.type
    with np.errstate(invalid="ignore"):  # NaN stays NaN (a masked one is dropped by the mask after)
        return (dt(c) * np.tanh(scaled / dt(c))).astype(scaled.dtype, copy=False)
