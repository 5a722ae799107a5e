"""The semantic profile's two bitwise invariances, measured on every library and every backend:
does a sequence's output depend on the rest of its batch, and does it depend on its inputs' memory
layout? These are the promises `Capabilities.batch_invariant` and `Capabilities.layout_invariant`;
here they are measured, declared or not, so the report says who has them.

Library probes call the library's own attention (probes.py's `attend`, and `attend_laid_out` for
layouts: each raw converts a NumPy view to its own array type keeping the layout where the type
can, and says whether it did, strides read back). Contract probes go through the backend's
`forward` as the suite does (`Runner`; layouts through its own `from_numpy`, `Runner.laid_out`).
A layout that did not reach the library's or backend's arrays is "not exercised", never "equal".
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from conformance.suite import layouts as L

#: The dtypes the library probes compare bit for bit: where BLAS and kernel choices differ; the 16-bit
#: results round away most last-bit differences (docs/layouts.md), so they would say little.
BIT_DTYPES = ("float64", "float32")


def _differs(a: np.ndarray, b: np.ndarray) -> int:
    return int((~((a == b) | (np.isnan(a) & np.isnan(b)))).sum())


def _value(differs: list[str], unexercised: list[str], errors: list[str], total: int) -> str:
    """"equal" when every measured item kept its bits, else "differs (...)"; the unmeasured named after."""
    parts = [f"differs ({', '.join(differs)})"] if differs else \
        ["equal"] if total > len(unexercised) + len(errors) else []
    parts += [f"not exercised ({', '.join(unexercised)})"] if unexercised else []
    parts += [f"raises ({', '.join(errors)})"] if errors else []
    return "; ".join(parts)


# -- batch invariance --------------------------------------------------------------------------------
def library_batch(raw: Any, inputs: Callable, call: Callable) -> tuple[str, str]:
    """A batch of 4 against each sequence alone and against the batch reversed, bit for bit
    (FlashInfer's test_batch_invariant asks the same of a batch and its first rows)."""
    q, k, v = inputs(4, 2, 24, 24, 16, seed=34)
    notes, differs, errors = [], [], []
    for dtype in BIT_DTYPES:
        full, err = call(lambda dtype=dtype: raw.attend(q, k, v, dtype=dtype))
        if err:
            notes.append(f"{dtype}: raises {err}")
            errors.append(dtype)
            continue
        alone = sum(_differs(call(lambda j=j: raw.attend(q[j:j + 1], k[j:j + 1], v[j:j + 1], dtype=dtype))[0],
                             full[j:j + 1]) > 0 for j in range(4))
        rev, _ = call(lambda: raw.attend(q[::-1].copy(), k[::-1].copy(), v[::-1].copy(), dtype=dtype))
        flipped = _differs(rev[::-1], full) if rev is not None else -1
        notes.append(f"{dtype}: {alone} of 4 sequences differ alone, "
                     f"{'reversed batch raises' if flipped < 0 else f'{flipped} elements differ in the reversed batch'}")
        if alone or flipped:
            differs.append(dtype)
    return _value(differs, [], errors, len(BIT_DTYPES)), "B=4, H=2, T=24, head_dim 16, no mask: " + "; ".join(notes)


def contract_batch(backend: Any, measured: Callable) -> tuple[str, str]:
    """The backend's forward on a batch of 4 padded sequences, each sequence alone, bit for bit, each declared dtype."""
    from conformance.findings import probes as fp

    notes, differs, errors = [], [], []
    kpm = np.ones((4, 6), dtype=bool)
    kpm[1, 4:] = False  # right padding
    kpm[2, :1] = False  # left padding
    caps = backend.capabilities
    for dtype in caps.dtypes:
        case = fp._case(backend, caps.causal, kpm if caps.key_padding_mask else None, seed=34, dtype=dtype)

        def run(r, case=case):
            alone = [r.forward(case.with_(x=case.x[j:j + 1], key_padding_mask=None if case.key_padding_mask is None
                                          else case.key_padding_mask[j:j + 1])) for j in range(case.B)]
            return r.forward(case), np.concatenate(alone)

        got, err = measured(backend, "batch probe", run, dtype)
        if err:
            notes.append(f"{dtype}: raises {err}")
            errors.append(dtype)
            continue
        n = sum(_differs(got[0][j], got[1][j]) > 0 for j in range(case.B))
        notes.append(f"{dtype}: {n} of {case.B} sequences differ alone")
        if n:
            differs.append(dtype)
    return _value(differs, [], errors, len(caps.dtypes)), \
        f"B={4 if caps.key_padding_mask else 2}, T=6, padding where declared, each sequence alone: " + "; ".join(notes)


# -- layout invariance -------------------------------------------------------------------------------
def _same_along_batch(a: np.ndarray) -> np.ndarray:
    """a [B, ...] with every batch row equal to the first: values a stride-0 view can hold along the batch,
    whatever shape the library takes them in ([B, H, T, hd], [B, T, H, hd], [B, T, E])."""
    return L.broadcastable(a, 0)


def library_layouts(raw: Any, inputs: Callable, call: Callable) -> tuple[str, str]:
    """q, k and v handed to the library in each layout, against the contiguous call, bit for bit."""
    if not hasattr(raw, "attend_laid_out"):
        return "not probed", "no layout probe for this library"
    q, k, v = inputs(2, 2, 24, 24, 16, seed=35)
    notes, differs, unexercised, errors = [], [], [], []
    for layout in L.LAYOUTS:
        qq, kk, vv = (_same_along_batch(a) for a in (q, k, v)) if layout == "broadcast" else (q, k, v)
        changed, why, err = [], None, None
        for dtype in BIT_DTYPES:
            base, err = call(lambda dtype=dtype: raw.attend(qq, kk, vv, dtype=dtype))
            if err is None:
                try:  # the raw converts the views itself and says whether the layout reached its arrays
                    got, why = raw.attend_laid_out(qq, kk, vv, layout, dtype)
                except Exception as e:  # a refusal of the layout is a measurement
                    err = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
            if err or why:
                break
            changed += [dtype] if _differs(np.asarray(got, dtype=np.float64), base) else []
        if err:
            notes.append(f"{layout}: raises {err}")
            errors.append(layout)
        elif why:
            notes.append(f"{layout}: not exercised ({why})")
            unexercised.append(layout)
        else:
            notes.append(f"{layout}: " + (f"differs ({', '.join(changed)})" if changed else "the same bits"))
            differs += [layout] if changed else []
    return _value(differs, unexercised, errors, len(L.LAYOUTS)), \
        "q, k, v [2, 2, 24, 16] laid out vs contiguous, float64 and float32: " + "; ".join(notes)


def contract_layouts(backend: Any, measured: Callable) -> tuple[str, str]:
    """x and the padding mask in each layout through the backend's own from_numpy, bit for bit (probe dtype)."""
    from conformance.findings import probes as fp

    caps = backend.capabilities
    kpm = None
    if caps.key_padding_mask:
        kpm = np.ones((2, 6), dtype=bool)
        kpm[0, 4:] = False
    notes, differs, unexercised, errors = [], [], [], []
    for layout in L.LAYOUTS:
        case = fp._case(backend, caps.causal, kpm, seed=35)
        if layout == "broadcast":  # the contiguous run gets the same, batch-equal values
            case = case.with_(x=L.broadcastable(case.x, 0), key_padding_mask=None if kpm is None else L.broadcastable(kpm, 0))
        plan = {"x": layout, **({"key_padding_mask": layout} if kpm is not None else {})}

        def run(r, case=case, plan=plan):
            base = r.forward(case)
            with r.laid_out(plan):
                got = r.forward(case)
            return base, got, r.layouts_seen.get(f"x {layout}")

        got, err = measured(backend, "layout probe", run)
        if err:
            notes.append(f"{layout}: raises {err}")
            errors.append(layout)
        elif got[2] is not None:
            notes.append(f"{layout}: not exercised ({got[2]})")
            unexercised.append(layout)
        else:
            n = _differs(got[0], got[1])
            notes.append(f"{layout}: " + (f"{n} elements differ" if n else "the same bits"))
            differs.extend([layout] if n else [])
    return _value(differs, unexercised, errors, len(L.LAYOUTS)), \
        f"x{' and the padding mask' if kpm is not None else ''} [2, 6, 8] laid out vs contiguous " \
        f"({fp.probe_dtype(backend)}): " + "; ".join(notes)


class LaysOut:
    """For a raw library: its own conversion to the library's arrays goes through `_laid`, so that
    `attend_laid_out` hands the library q, k and v in one layout and says whether it reached them."""

    _layout: str | None = None
    _why: list[str | None] = []

    def _laid(self, a: np.ndarray, convert: Callable, native: Callable | None = None) -> Any:
        """convert(a), or convert(a's view in the layout of this call), noting whether the layout reached
        the array `native(view)` (default: what convert returns), strides read back."""
        if self._layout is None:
            return convert(a)
        view = L.lay_out(a, self._layout, 0)  # broadcast along the batch: one sequence served to many
        try:
            out = convert(view)
        except ValueError as e:  # torch.from_numpy refuses a negative stride: the layout cannot reach it
            self._why.append(f"{type(e).__name__}: {' '.join(str(e).split())[:100]}")
            return convert(np.ascontiguousarray(view))
        self._why.append(L.reached(view, out if native is None else native(view)))
        return out

    def attend_laid_out(self, q, k, v, layout: str, dtype: str) -> tuple[np.ndarray, str | None]:
        """`attend` with q, k, v in `layout`: (output, None) when the layout reached the library's arrays, else why not."""
        self._layout, self._why = layout, []
        try:
            out = self.attend(q, k, v, dtype=dtype)
        finally:
            self._layout = None
        return out, next((w for w in self._why if w), None)
