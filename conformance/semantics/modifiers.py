"""The semantic profile's score-modifier columns: each library's sliding-window convention and
softcap position, measured on the library (`window_convention`, `softcap_position`) and through
a backend's contract (`contract_window`, `contract_softcap`).

A library probe calls `raw.attend_modified(q, k, v, window=w, softcap=c, mask=...)`, the raw's
own spelling of "a window of w" and "a softcap of c"; a raw without that method is asked
`raw.no_modifier(kind)` for the reason (an argument missing from the library's signature, read
there), or reports that this round does not probe it. Zero queries make every output the mean
of the values a query may see, so the keys covered are read off the output, scale-free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from conformance.semantics.probes import _call, _closest, entry, inputs, reference
from spec.config import AttentionConfig

W = 2  # the window the probes pass: the spec's (2, 0) covers 3 keys


def _unprobed(raw: Any, kind: str) -> dict[str, str] | None:
    if hasattr(raw, "attend_modified"):
        return None
    why = raw.no_modifier(kind) if hasattr(raw, "no_modifier") else None
    return entry("not offered", why) if why else entry("not probed", f"no {kind} probe for this library this round")


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


def library_profile(raw: Any) -> dict[str, dict[str, str]]:
    return {"window": window_convention(raw), "softcap": softcap_position(raw)}


def contract_window(backend: Any) -> tuple[str, str]:
    """Declared window: window (2, 0) through the forward (Tq = Tk), against (1, 0), (3, 0) and none."""
    if not backend.capabilities.window:
        return "n/a", "sliding windows not declared (Capabilities.window is False)"
    return _contract(backend, "window", {"w + 1 keys (the spec)": (W, 0), "w keys": (W - 1, 0),
                                         "w + 2 keys": (W + 1, 0), "no window": None})


def contract_softcap(backend: Any) -> tuple[str, str]:
    """Declared softcap: softcap 2 through the forward, against none and the cap on unscaled scores
    (which is the spec's softcap c / sqrt(head_dim): c * tanh(s * sqrt(hd) / c) / sqrt(hd))."""
    if not backend.capabilities.softcap:
        return "n/a", "logit softcapping not declared (Capabilities.softcap is False)"
    return _contract(backend, "softcap", {"on the scaled scores (the spec)": 2.0, "ignored": None,
                                          "on unscaled scores": 2.0 / 2})  # head_dim 4


def _contract(backend: Any, field: str, candidates: dict[str, Any]) -> tuple[str, str]:
    from dataclasses import replace

    from conformance.findings import probes as fp
    from conformance.semantics.contract import _measured
    from conformance.suite.strategies import case_from
    from spec import block

    caps, dtype = backend.capabilities, fp.probe_dtype(backend)
    config = AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=caps.causal,  # head_dim 4
                             **{field: next(iter(candidates.values()))})  # the first candidate is the spec's
    case = case_from(config, 1, 7, dtype, seed=32, x_scale=3.0, param_scale=3.0)
    got, err = _measured(backend, f"{field} probe", lambda r: r.forward(case), dtype)
    if err:
        return "raises", err
    want = {name: block.forward(case.x.astype(np.float64), case.params.map(lambda a: a.astype(np.float64)),
                                replace(config, **{field: value})) for name, value in candidates.items()}
    found = fp._match(got, want, dtype)
    return found or "other", f"{field}={getattr(config, field)} through the forward (Tq = Tk = 7): " \
                             f"{found or 'matches no candidate'}"
