"""The semantic-profile probes: where attention libraries disagree, measured on each library.

Every probe calls a library's own attention (a `libraries.Raw`), never a backend adapter, so
no correction made by an adapter can hide what the library does. Each runs on tiny inputs
whose expected outputs under each candidate behaviour are computed here in float64, and
reports the candidate that the library's output matches (or what it did instead: NaN, an
exception, an unrecognised value). Nothing is copied from documentation.

Columns of the profile (`COLUMNS`): the fully masked row, the key padding mask polarity,
causal alignment when Tq < Tk, the default scale, the dropout mode, the output dtype for
float16 and bfloat16 inputs, the dtypes that run, grouped K/V heads (the query-to-K/V
head mapping and the groups accepted), the sliding window's keys covered and the softcap's
position (a raw's `attend_modified`, or `no_modifier` saying why it has none), and two
promises a backend may declare, measured (`declarations.py`): whether NaN and +-inf in
masked positions stay out of the other rows, and whether a decode step gives the forward's bits;
and two more (`invariance.py`): whether a sequence's bits depend on the rest of its batch, and
on its inputs' memory layout.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import numpy as np

COLUMNS: tuple[tuple[str, str], ...] = (
    ("fully_masked_row", "fully masked row"),
    ("mask_polarity", "key padding mask polarity"),
    ("causal_alignment", "causal alignment, Tq < Tk"),
    ("default_scale", "default scale"),
    ("dropout", "dropout mode"),
    ("low_precision_output", "output dtype, low-precision inputs"),
    ("dtypes", "dtypes supported"),
    ("kv_grouping", "grouped K/V heads"),
    # the score modifiers' conventions (conformance/semantics/modifiers.py)
    ("window", "sliding window w: keys covered, Tq < Tk"),
    ("softcap", "softcap position"),
    # the bias's and the sinks' fully masked rows (conformance/semantics/score_terms.py)
    ("bias_masked_row", "fully masked row, float bias -1e9"),
    ("sink_masked_row", "fully masked row with a sink"),
    ("non_finite_masked", "non-finite masked inputs"),
    ("decode_bitwise", "decoding = forward, bitwise"),
    # two more promises, measured (invariance.py)
    ("batch_bitwise", "batch invariant, bitwise"),
    ("layout_bitwise", "layout invariant, bitwise"),
)
DTYPES = ("float64", "float32", "float16", "bfloat16")
#: How close a float32 output must be to a candidate's float64 value to be called a match:
#: the inputs are O(1) and 4-16 elements long, so float32 rounding is ~1e-6; the candidates
#: differ from each other by more than 0.05 on these inputs (checked in `_closest`).
MATCH = 1e-4


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, allowed: np.ndarray | None = None,
              scale: float | None = None) -> np.ndarray:
    """softmax(q k^T * scale, masked) v in float64; q [B, H, Tq, hd], allowed broadcasts to [B, H, Tq, Tk]."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.swapaxes(-1, -2) * scale  # (B, H, Tq, Tk)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v  # (B, H, Tq, hd)


def inputs(B: int, H: int, Tq: int, Tk: int, hd: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, H, T, hd)) for T in (Tq, Tk, Tk))
    return q, k, v


def entry(value: str, detail: str = "") -> dict[str, str]:
    return {"value": value, "detail": detail or value}


def _error(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:160]}"


def _closest(out: np.ndarray, candidates: dict[str, np.ndarray]) -> str | None:
    """The candidate name `out` matches, or None; candidates must be told apart by the inputs."""
    errs = {name: float(np.abs(out - c).max()) for name, c in candidates.items()}
    best = min(errs, key=errs.get)
    spread = min((float(np.abs(candidates[best] - c).max()) for n, c in candidates.items() if n != best),
                 default=np.inf)
    assert spread > 0.05, f"probe inputs do not separate the candidates ({spread})"
    return best if errs[best] < MATCH else None


def _call(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray | None, str | None]:
    try:
        return np.asarray(fn(), dtype=np.float64), None
    except Exception as e:  # a library's refusal is a measurement, not a crash
        return None, _error(e)


def mask_polarity(raw: Any) -> dict[str, str]:
    """One query, four keys, a boolean mask that is True for key 0 only.

    The query is 0, so every score is 0 whatever the scale: the output is the mean of the
    values the library lets the query see (v0 alone, or v1..v3).
    """
    q, k, v = inputs(1, 1, 1, 4, 4, seed=1)
    q = np.zeros_like(q)
    mask = np.array([[True, False, False, False]])
    out, err = _call(lambda: raw.attend(q, k, v, mask=mask))
    if err:
        return entry("raises", err)
    found = _closest(out, {"True = take part": reference(q, k, v, mask[:, None, None, :]),
                           "True = masked out": reference(q, k, v, ~mask[:, None, None, :])})
    return entry(found or "neither", f"mask True only for key 0: the output is "
                 f"{'attention over key 0 alone' if found == 'True = take part' else 'attention over keys 1-3' if found else np.round(out.ravel(), 4).tolist()}")


def fully_masked_row(raw: Any, polarity: str) -> dict[str, str]:
    """Batch row 1 has every key masked (in the library's own polarity); row 0 none."""
    x = inputs(2, 2, 3, 3, 4, seed=2)[0]  # self-attention, q is k is v: the path libraries take in use
    take = np.array([[True] * 3, [False] * 3])
    mask = ~take if polarity == "True = masked out" else take
    out, err = _call(lambda: raw.attend(x, x, x, mask=mask))
    if err:
        return entry("raises", err)
    row = out[1]  # (H, Tq, hd)
    if np.isnan(row).all():
        return entry("NaN", "every output of the fully masked row is NaN")
    if np.isnan(row).any():
        return entry("partly NaN", f"{int(np.isnan(row).sum())} of {row.size} outputs are NaN")
    if np.abs(row).max() == 0:
        return entry("zeros", "the fully masked row's context is exactly 0")
    if np.abs(row - x[1].mean(-2, keepdims=True)).max() < MATCH:  # softmax of equal logits: mean of V
        return entry("uniform", "the fully masked row's context is the uniform average of V "
                     "(masked logits are a finite large negative number, equal across the row)")
    return entry("other", f"max |context| {np.abs(row).max():.3g}, neither 0, NaN nor the mean of V")


def causal_alignment(raw: Any) -> dict[str, str]:
    """Two queries, five keys, the library's causal option; no padding mask.

    Zero queries again (scale-free): each output is the mean of the values its query may see.
    """
    Tq, Tk = 2, 5
    q, k, v = inputs(1, 1, Tq, Tk, 4, seed=3)
    q = np.zeros_like(q)
    out, err = _call(lambda: raw.attend(q, k, v, causal=True))
    if err:
        return entry("raises", f"Tq={Tq} < Tk={Tk} with the causal option: {err}")
    top_left = np.tril(np.ones((Tq, Tk), bool))  # query i sees keys 0..i
    bottom_right = np.tril(np.ones((Tq, Tk), bool), Tk - Tq)  # query i sees keys 0..i+Tk-Tq
    found = _closest(out, {"top-left": reference(q, k, v, top_left),
                           "bottom-right": reference(q, k, v, bottom_right),
                           "no mask": reference(q, k, v)})
    detail = {"top-left": "query i sees keys 0..i (the first queries, not the last)",
              "bottom-right": "query i sees keys 0..i+Tk-Tq (the queries are the last positions, as the spec)",
              "no mask": "the causal option had no effect when Tq != Tk"}.get(found, "none of top-left, "
                                                                            "bottom-right or unmasked")
    return entry(found or "other", f"Tq={Tq}, Tk={Tk}: {detail}")


def default_scale(raw: Any) -> dict[str, str]:
    """head_dim 16, no scale given; compared with 1/sqrt(hd), 1 and 1/hd."""
    hd = 16
    q, k, v = inputs(1, 1, 3, 3, hd, seed=4)
    out, err = _call(lambda: raw.attend(q, k, v))
    if err:
        return entry("raises", err)
    found = _closest(out, {"1/sqrt(head_dim)": reference(q, k, v, scale=1 / math.sqrt(hd)),
                           "1 (none)": reference(q, k, v, scale=1.0),
                           "1/head_dim": reference(q, k, v, scale=1 / hd)})
    return entry(found or "other", f"head_dim={hd}, no scale argument: matches {found or 'no candidate'}")


def low_precision_output(raw: Any) -> dict[str, str]:
    """The output dtype for float16 and bfloat16 inputs (float32 when the result is widened)."""
    q, k, v = inputs(1, 2, 3, 3, 4, seed=5)
    parts = []
    for dtype in ("float16", "bfloat16"):
        try:
            parts.append((f"{dtype} → {raw.output_dtype(q, k, v, dtype)}", ""))
        except Exception as e:
            parts.append((f"{dtype}: raises", _error(e)))
    return entry(", ".join(p for p, _ in parts), "; ".join(p + (f" ({d})" if d else "") for p, d in parts))


def dtypes(raw: Any) -> dict[str, str]:
    """Each dtype that runs, with its error against float64 relative to the largest output."""
    q, k, v = inputs(2, 2, 5, 5, 8, seed=6)
    gold = reference(q, k, v)
    ok, notes = [], []
    for dtype in DTYPES:
        out, err = _call(lambda dtype=dtype: raw.attend(q, k, v, dtype=dtype))
        if err:
            notes.append(f"{dtype}: {err}")
            continue
        rel = float(np.abs(out - gold).max() / np.abs(gold).max())
        ok.append(dtype)
        notes.append(f"{dtype}: relative error {rel:.1e}")
    extra = raw.dtype_notes() if hasattr(raw, "dtype_notes") else []  # (short, long)
    value = ", ".join(ok) or "none"
    return entry(value + "".join(f" ({short})" for short, _ in extra), "; ".join(notes + [n for _, n in extra]))


#: (H, n_kv_heads) the grouping probe offers after the mapping's 4 over 2: groups of 2, 3 and 4,
#: multi-query, and 6 query heads over 4 K/V heads, which no grouping divides (should be refused).
GROUPINGS = ((6, 3), (6, 2), (8, 2), (4, 1), (6, 4))


def grouped_reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """`reference` with query head h reading K/V head heads[h]: k, v [B, Hkv, Tk, hd]."""
    return reference(q, k[:, heads], v[:, heads])  # (B, H, Tq, hd)


def kv_grouping(raw: Any) -> dict[str, str]:
    """Fewer K/V heads than query heads, given to the library as it takes them (`attend_grouped`).

    4 query heads over 2 K/V heads tell consecutive groups (head h reads K/V head h // 2, the
    spec's) from interleaved ones (h % 2); then each of `GROUPINGS` runs and must match that
    mapping. A library with no way to pass fewer K/V heads says why (`cannot_group`).
    """
    why = raw.cannot_group() if hasattr(raw, "cannot_group") else None
    if why:
        return entry("cannot", why)
    q, _, _ = inputs(1, 4, 3, 5, 4, seed=10)
    _, k, v = inputs(1, 2, 3, 5, 4, seed=11)
    out, err = _call(lambda: raw.attend_grouped(q, k, v))
    if err:
        return entry("raises", f"4 query heads over 2 K/V heads: {err}")
    H = np.arange(4)
    mapping = _closest(out, {"consecutive": grouped_reference(q, k, v, H // 2),
                             "interleaved": grouped_reference(q, k, v, H % 2)})
    if mapping is None:
        return entry("other", "4 query heads over 2 K/V heads: neither consecutive (h // 2) nor interleaved (h % 2)")
    accepted, notes = [], [f"4 over 2: {mapping} (query head h reads K/V head "
                           f"{'h // group' if mapping == 'consecutive' else 'h % n_kv_heads'})"]
    for Hq, Hkv in GROUPINGS:
        q, _, _ = inputs(1, Hq, 3, 5, 4, seed=12)
        _, k, v = inputs(1, Hkv, 3, 5, 4, seed=13)
        out, err = _call(lambda: raw.attend_grouped(q, k, v))
        if Hq % Hkv:
            notes.append(f"{Hq} over {Hkv} (no whole groups): " + (f"refused ({err})" if err else "accepted"))
            continue
        heads = np.arange(Hq) // (Hq // Hkv) if mapping == "consecutive" else np.arange(Hq) % Hkv
        ok = err is None and float(np.abs(out - grouped_reference(q, k, v, heads)).max()) < MATCH
        if ok:
            accepted.append("multi-query" if Hkv == 1 else f"{Hq // Hkv}")
        notes.append(f"{Hq} over {Hkv}: " + ("as the mapping" if ok else err or "a different output"))
    groups = sorted({2, *(int(a) for a in accepted if a != "multi-query")})
    value = f"{mapping}; groups {', '.join(map(str, groups))}" + (", multi-query" if "multi-query" in accepted else "")
    return entry(value, "; ".join(notes))


# -- the score modifiers: a sliding window's keys covered, the softcap's position ----------------
W = 2  # the window the probes pass: the spec's (2, 0) covers 3 keys


def _unprobed(raw: Any, kind: str) -> dict[str, str] | None:
    """The entry of a library that lacks the modifier (read from its signature) or has no probe; None: probe it."""
    why = raw.no_modifier(kind) if hasattr(raw, "no_modifier") else None
    if why:
        return entry("not offered", why)
    return None if hasattr(raw, "attend_modified") else entry("not probed", f"no {kind} probe for this library this round")


def _band(Tq: int, Tk: int, left: int, top_left: bool = False) -> np.ndarray:
    p = np.arange(Tq)[:, None] + (0 if top_left else Tk - Tq)  # (Tq, 1): each query's position
    j = np.arange(Tk)[None, :]
    return (j <= p) & (j >= p - left)  # (Tq, Tk)


def window_convention(raw: Any) -> dict[str, str]:
    """3 queries over 7 keys (the last 3 positions), causal, the library's window of w = 2."""
    skip = _unprobed(raw, "window")
    if skip:
        return skip
    Tq, Tk = 3, 7
    q, k, v = inputs(1, 1, Tq, Tk, 4, seed=30)
    q = np.zeros_like(q)
    out, err = _call(lambda: raw.attend_modified(q, k, v, window=W))
    if err:
        return entry("raises", f"window {W}, Tq={Tq} < Tk={Tk}: {err}")
    found = _closest(out, {"w + 1 keys, bottom-right": reference(q, k, v, _band(Tq, Tk, W)),
                           "w keys, bottom-right": reference(q, k, v, _band(Tq, Tk, W - 1)),
                           "w + 1 keys, top-left": reference(q, k, v, _band(Tq, Tk, W, top_left=True)),
                           "no window": reference(q, k, v, _band(Tq, Tk, Tk))})
    return entry(found or "other", f"window {W} passed as the library takes it, Tq={Tq}, Tk={Tk}: "
                                   f"{found or 'none of the candidates'} (the spec: w + 1 keys, bottom-right)")


def _capped(q, k, v, allowed, c: float, how: str) -> np.ndarray:
    scale = 1 / math.sqrt(q.shape[-1])
    s = q @ k.swapaxes(-1, -2)  # (B, H, Tq, Tk)
    if how == "before the mask":
        s = np.where(allowed, c * np.tanh(s * scale / c), -np.inf)
    elif how == "after the mask":
        s = c * np.tanh(np.where(allowed, s * scale, -np.inf) / c)  # -inf -> -c: masked keys come back
    elif how == "on unscaled scores":
        s = np.where(allowed, c * np.tanh(s / c) * scale, -np.inf)
    else:  # ignored
        s = np.where(allowed, s * scale, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


def softcap_position(raw: Any) -> dict[str, str]:
    """4 queries over 4 keys, key 3 padded, scores up to about 30, softcap 2."""
    skip = _unprobed(raw, "softcap")
    if skip:
        return skip
    q, k, v = inputs(1, 1, 4, 4, 4, seed=31)
    q, mask = q * 4, np.array([[True, True, True, False]])
    out, err = _call(lambda: raw.attend_modified(q, k, v, softcap=2.0, mask=mask))
    if err:
        return entry("raises", f"softcap 2: {err}")
    allowed = mask[:, None, None, :]
    hows = ("before the mask", "after the mask", "on unscaled scores", "ignored")
    found = _closest(out, {h: _capped(q, k, v, allowed, 2.0, h) for h in hows})
    return entry(found or "other", f"softcap 2 on scaled scores up to ~30, key 3 padded: {found or 'none'} "
                                   f"(the spec: on the scaled scores, before the mask)")



def profile(raw: Any) -> dict[str, dict[str, str]]:
    """All columns for one library; a probe that crashes is reported, not raised."""
    out: dict[str, dict[str, str]] = {}
    out["mask_polarity"] = _guard(lambda: mask_polarity(raw))
    out["fully_masked_row"] = _guard(lambda: fully_masked_row(raw, out["mask_polarity"]["value"]))
    out["causal_alignment"] = _guard(lambda: causal_alignment(raw))
    out["default_scale"] = _guard(lambda: default_scale(raw))
    out["dropout"] = _guard(lambda: entry(*raw.dropout()))
    out["low_precision_output"] = _guard(lambda: low_precision_output(raw))
    out["dtypes"] = _guard(lambda: dtypes(raw))
    out["kv_grouping"] = _guard(lambda: kv_grouping(raw))
    out["window"] = _guard(lambda: window_convention(raw))
    out["softcap"] = _guard(lambda: softcap_position(raw))
    from conformance.semantics import score_terms as st  # it takes this module's helpers as an argument

    helpers = sys.modules[__name__]
    out["bias_masked_row"] = _guard(lambda: st.bias_masked_row(raw, helpers))
    out["sink_masked_row"] = _guard(lambda: st.sink_masked_row(raw, helpers))
    from conformance.semantics import declarations as dc  # lazily: it loads the suite's checks
    from conformance.semantics import invariance as iv

    polarity = out["mask_polarity"]["value"]
    out["non_finite_masked"] = _guard(lambda: entry(*dc.library_non_finite(raw, polarity, inputs, _call)))
    out["decode_bitwise"] = _guard(lambda: entry(*dc.library_decode(raw, inputs, _call)))
    out["batch_bitwise"] = _guard(lambda: entry(*iv.library_batch(raw, inputs, _call)))
    out["layout_bitwise"] = _guard(lambda: entry(*iv.library_layouts(raw, inputs, _call)))
    return {key: out[key] for key, _ in COLUMNS}


def _guard(fn: Callable[[], dict[str, str]]) -> dict[str, str]:
    try:
        return fn()
    except Exception as e:
        return entry("probe error", _error(e))
