"""Which keys each query may see: the attention mask, written once for the spec and the suite.

Every mask the spec and the suite's references use is built here (`visible`), so a new kind
of mask (a sliding window today) is one argument in one place. Queries and keys may differ in
length (Tq <= Tk, KV-cache decoding): the queries are then the LAST Tq positions, so query i
sits at position i + Tk - Tq and the causal mask is aligned bottom-right.

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


def visible(Tq: int, Tk: int, causal: bool, key_padding_mask: np.ndarray | None = None,
            window: int | None = None) -> np.ndarray:
    """Bool [B or 1, 1, Tq, Tk]: True where query i may attend to key j.

    `causal`: key j no later than the query's position i + Tk - Tq. `key_padding_mask` [B, Tk]
    (True = may attend) masks whole keys per batch row; the result then has B rows, else one
    (it broadcasts over the batch and the heads). `window`: a query also sees only the `window`
    latest positions up to its own (j > i + Tk - Tq - window), a sliding window counted as
    Mistral's and FlashAttention's left window plus one; None: no window.
    """
    if window is not None and (not isinstance(window, (int, np.integer)) or window < 1):
        raise ValueError(f"window={window!r}: must be a positive int (keys a query sees, itself included) or None")
    ok = np.ones((1, 1, Tq, Tk), dtype=bool)  # (1, 1, Tq, Tk)
    if causal:
        ok &= ~causal_mask(Tq, Tk)
    if window is not None:
        pos = np.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, 1): each query's position among the keys
        ok &= np.arange(Tk)[None, :] > pos - window  # (Tq, Tk)
    if key_padding_mask is not None:
        ok = ok & np.asarray(key_padding_mask, dtype=bool)[:, None, None, :]  # (B, 1, Tq, Tk)
    return ok
