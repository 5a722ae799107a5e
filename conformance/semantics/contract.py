"""The semantic profile of any backend, measured through its contract (the `Runner` the suite uses).

The library probes (`probes.py`) call a library's own attention; these call the backend as the
suite does, so they work for every backend, plug-ins included, and measure what the backend
adapter delivers. The columns of `probes.COLUMNS` that the contract can show are measured here
(causal alignment only through KV-cache decoding: the forward has Tq = Tk), plus two the
library probes lack (`CONTRACT_ONLY`). The probes of `conformance.findings.probes` are reused
with their meaning unchanged; their values are shown as they are (the `spec.conventions.MENU`
names a backend would declare). A column that cannot be measured says why ("n/a: ...").
Every probe runs under a CPU-time limit and never raises: what went wrong is its answer.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from conformance.findings import probes as fp
from conformance.semantics import declarations as dc
from conformance.semantics import invariance as iv
from conformance.semantics import score_terms
from conformance.suite.calls import Runner
from conformance.suite.checks import CheckFailure
from conformance.suite.judgement import Judgement, judged_under
from conformance.suite.process_state import restored_state
from conformance.suite.watchdog import BackendHang, time_limit
from conformance.semantics.probes import COLUMNS
from spec import block
from spec.block import sample_dropout_mask
from spec.config import AttentionConfig

#: Columns only the contract probes measure (a library row shows "—" there).
CONTRACT_ONLY: tuple[tuple[str, str], ...] = (
    ("padded_query_rows", "padded query rows"),
    ("float64_compute", "float64 computed in"),
    ("alibi", "ALiBi slopes, through the contract"),
)
ALL_COLUMNS = COLUMNS + CONTRACT_ONLY
SPEC_SCALE = "matches the spec's 1/sqrt(head_dim)"


def _measured(backend: Any, what: str, fn: Callable[[Runner], Any], dtype: str | None = None) -> tuple[Any, str | None]:
    """fn(runner) under the probes' CPU-time limit, judged by nobody: (result, None) or (None, what went wrong)."""
    dtype = dtype or fp.probe_dtype(backend)
    try:
        with restored_state(), judged_under(Judgement()), time_limit(fp.PROBE_LIMIT_S, f"{what} on {backend.name}"):
            return fn(Runner(backend, dtype)), None
    except (CheckFailure, BackendHang) as e:
        return None, str(e).splitlines()[0][:300]
    except Exception as e:  # a probe is a measurement: nothing it meets may stop the profile
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def causal_alignment(backend: Any) -> tuple[str, str]:
    """Tq < Tk exists only in KV-cache decoding: prefill 4 tokens, decode 2, each candidate's outputs compared."""
    caps = backend.capabilities
    if not caps.kv_cache:
        return "n/a", "no KV-cache decoding (forward always has Tq = Tk)"
    if not caps.causal:
        return "n/a", "causal attention not supported"
    from conformance.suite.cache_reference import decoded, decoded_top_left

    t, n = 4, 2
    case = fp._case(backend, True, None, seed=16)  # B=2, T=6

    def run(r: Runner) -> np.ndarray:
        w = r.weights(case.params)
        cache = r.prefill(case.x[:, :t], w, case.config)
        return r.decode(f"decode of {n} tokens after {t}", case.x[:, t:], cache, w, case.config)[0]

    got, err = _measured(backend, "causal alignment probe", run, case.dtype)
    if err:
        return "raises", f"Tq={n} < Tk={t + n} by prefill then decode: {err}"
    args = (case.x, case.params, case.config, None, t, (n,))
    found = fp._match(got, {"bottom-right": decoded(*args),
                            "top-left": decoded_top_left(*args),
                            "no mask": decoded(case.x, case.params, replace(case.config, causal=False), None, t, (n,))},
                      case.dtype)
    detail = {"bottom-right": "new token i sees keys 0..t+i (the queries are the last positions, as the spec)",
              "top-left": "new token i sees keys 0..i (the causal mask aligned to the first queries)",
              "no mask": "the new tokens see every key, later new tokens included"}
    return found or "other", f"prefill t={t}, decode n={n} (Tq={n}, Tk={t + n}): " + detail.get(
        found, "none of bottom-right, top-left or unmasked")


def default_scale(backend: Any) -> tuple[str, str]:
    """The plain forward (no mask) against the spec's block at 1/sqrt(head_dim) and the usual wrong scales."""
    case = fp._case(backend, not backend.capabilities.non_causal, None, seed=17)
    got, err = _measured(backend, "scale probe", lambda r: r.forward(case), case.dtype)
    if err:
        return "raises", err
    hd, d = case.config.head_dim, case.config.d_out
    scales = {"1/sqrt(head_dim)": 1 / math.sqrt(hd), "1 (none)": 1.0, "1/head_dim": 1 / hd, "1/sqrt(d_out)": 1 / math.sqrt(d)}
    candidates = {}
    for name, s in scales.items():
        f = s * math.sqrt(hd)  # q scaled by f: the spec's 1/sqrt(hd) becomes s
        p = replace(case.params, W_q=case.params.W_q * f, b_q=None if case.params.b_q is None else case.params.b_q * f)
        candidates[name] = block.forward(case.x, p, case.config)
    found = fp._match(got, candidates, case.dtype)
    where = f"head_dim={hd}, d_out={d}, no scale argument in the contract"
    if found == "1/sqrt(head_dim)":
        return SPEC_SCALE, f"{where}: the plain forward equals the spec's block"
    if found:
        return found, f"{where}: the plain forward matches scores scaled by {found}, not 1/sqrt(head_dim)"
    return "other", f"{where}: the plain forward matches none of {', '.join(scales)}"


def dropout(backend: Any) -> tuple[str, str]:
    """The declared dropout mode (`Capabilities.dropout`), measured: replay reproduces the spec's
    inverted dropout for a given keep mask; own RNG gives different outputs on repeated calls."""
    mode = backend.capabilities.dropout
    if mode == "none":
        return "none", "Capabilities.dropout='none': training is never asked for"
    case = fp._case(backend, not backend.capabilities.non_causal, None, seed=18)
    config = replace(case.config, dropout_p=0.5)
    keep = sample_dropout_mask((case.B, config.n_heads, case.T, case.T), 0.5, seed=18)
    case = case.with_(config=config, dropout_mask=keep)
    if mode == "replay":
        got, err = _measured(backend, "dropout probe", lambda r: r.forward(case, training=True), case.dtype)
        if err:
            return "raises", f"declared replay; forward with a keep mask: {err}"
        found = fp._match(got, {"replay": block.forward(case.x, case.params, config, None, keep),
                                "ignores the keep mask": block.forward(case.x, case.params, config)}, case.dtype)
        return found or "other", ("declared replay; dropout_p=0.5 with a given keep mask: " +
                                  ("weights * keep / (1-p), as the spec" if found == "replay" else
                                   "the output is the no-dropout block" if found else
                                   "neither the spec's inverted dropout nor no dropout"))
    no_keep = case.with_(dropout_mask=None)
    outs, err = _measured(backend, "dropout probe", lambda r: [r.forward(no_keep, training=True) for _ in range(3)],
                          case.dtype)
    if err:
        return "raises", f"declared rng; forward with training=True: {err}"
    a, b, c = outs
    if not (np.array_equal(a, b) or np.array_equal(b, c)):
        return "own RNG", "declared rng; dropout_p=0.5, training=True: three calls give three different outputs"
    if fp._match(a, {"eval": block.forward(case.x, case.params, config)}, case.dtype):
        return "no effect", "declared rng; training=True with dropout_p=0.5 gives the no-dropout output"
    return "not random", "declared rng; repeated calls with training=True give the same output"


def low_precision_output(backend: Any) -> tuple[str, str]:
    """`findings.probes.output_dtypes` per declared low-precision dtype, each part shortened for the cell."""
    value, detail = fp.output_dtypes(backend)
    if value == "n/a":
        return value, detail
    parts = [p.replace(" -> ", " → ") if " -> " in p else p.split(":")[0] + ": raises" for p in detail.split("; ")]
    return ", ".join(parts), detail


def dtypes(backend: Any) -> tuple[str, str]:
    """Each declared dtype's forward, with its error against the spec's block in float64 relative to the largest output."""
    ok, notes = [], []
    for dtype in backend.capabilities.dtypes:
        case = fp._case(backend, backend.capabilities.causal, None, seed=19, dtype=dtype)
        got, err = _measured(backend, f"{dtype} probe", lambda r, case=case: r.forward(case), dtype)
        if err:
            notes.append(f"{dtype}: {err}")
            continue
        ok.append(dtype)
        notes.append(f"{dtype}: relative error {_rel(got, block.forward(case.x, case.params, case.config)):.1e}")
    return ", ".join(ok) or "none", "declared: " + ", ".join(backend.capabilities.dtypes) + "; " + "; ".join(notes)


def _interleaved(config: Any, params: Any) -> tuple[Any, Any]:
    """The ordinary config and params whose K/V head h is grouped K/V head h % n_kv_heads (interleaved)."""
    Hkv, hd = config.kv_heads, config.head_dim

    def rows(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        heads = a.reshape(Hkv, hd, *a.shape[1:])  # (Hkv, hd, ...)
        return np.tile(heads, (config.group,) + (1,) * (heads.ndim - 1)).reshape(config.d_out, *a.shape[1:])

    return (replace(config, n_kv_heads=config.n_heads),
            replace(params, W_k=rows(params.W_k), W_v=rows(params.W_v), b_k=rows(params.b_k), b_v=rows(params.b_v)))


def kv_grouping(backend: Any) -> tuple[str, str]:
    """Declared grouped_kv: 4 query heads over 2 K/V heads through the forward, consecutive (the
    spec's h // group) or interleaved (h % n_kv_heads); then multi-query (4 over 1)."""
    caps = backend.capabilities
    if not caps.grouped_kv:
        return "n/a", "grouped K/V heads not declared (Capabilities.grouped_kv is False)"
    from conformance.suite.strategies import case_from

    dtype = fp.probe_dtype(backend)
    found, notes = {}, []
    for Hkv in (2, 1):
        config = AttentionConfig(d_in=8, d_out=16, n_heads=4, n_kv_heads=Hkv, causal=not caps.non_causal)
        case = case_from(config, 2, 6, dtype, seed=20 + Hkv)
        got, err = _measured(backend, "grouping probe", lambda r, case=case: r.forward(case), dtype)
        if err:
            return "raises", "; ".join(notes + [f"4 query heads over {Hkv} K/V heads: {err}"])
        candidates = {"consecutive": block.forward(case.x, case.params, config)}
        if Hkv > 1:
            full, full_params = _interleaved(config, case.params)
            candidates["interleaved"] = block.forward(case.x, full_params, full)
        found[Hkv] = fp._match(got, candidates, dtype)
        notes.append(f"4 over {Hkv}: " + {"consecutive": "as the spec (query head h reads K/V head h // group)"
                                          if Hkv > 1 else "as the spec (every query head reads the one K/V head)",
                                          "interleaved": "query head h reads K/V head h % n_kv_heads",
                                          None: "matches no mapping"}[found[Hkv]])
    value = (found[2] or "other") + ("" if found[1] else "; multi-query matches no mapping")
    return value, "; ".join(notes)


def contract_window(backend: Any) -> tuple[str, str]:
    """Declared window: window (2, 0) through the forward (Tq = Tk), against (1, 0), (3, 0) and none."""
    if not backend.capabilities.window:
        return "n/a", "sliding windows not declared (Capabilities.window is False)"
    return _contract(backend, "window", {"w + 1 keys (the spec)": (2, 0), "w keys": (1, 0),
                                         "w + 2 keys": (3, 0), "no window": None})


def contract_softcap(backend: Any) -> tuple[str, str]:
    """Declared softcap: softcap 2 through the forward, against none and the cap on unscaled scores
    (which is the spec's softcap c / sqrt(head_dim): c * tanh(s * sqrt(hd) / c) / sqrt(hd))."""
    if not backend.capabilities.softcap:
        return "n/a", "logit softcapping not declared (Capabilities.softcap is False)"
    return _contract(backend, "softcap", {"on the scaled scores (the spec)": 2.0, "ignored": None,
                                          "on unscaled scores": 2.0 / 2})  # head_dim 4


def contract_sink_masked_row(backend: Any) -> tuple[str, str]:
    """Declared sinks: batch row 0 fully padded, sinks of 0, through the forward: zeros (b_o) or not."""
    caps = backend.capabilities
    if not caps.sinks or not caps.key_padding_mask:
        return "n/a", "sinks or key padding masks not declared (Capabilities.sinks, .key_padding_mask)"
    from conformance.suite.strategies import case_from

    dtype = fp.probe_dtype(backend)
    config = AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=caps.causal, sinks=(0.0, 0.0))
    kpm = np.ones((2, 5), dtype=bool)
    kpm[0] = False  # batch row 0: no key at all
    case = case_from(config, 2, 5, dtype, seed=43).with_(key_padding_mask=kpm)
    got, err = _measured(backend, "sink probe", lambda r: r.forward(case), dtype)
    if err:
        return "raises", err
    if np.isnan(got[0]).any():
        return "NaN", "sinks of 0, batch row 0 fully padded: NaN in its outputs"
    ok = fp._match(got[:1], {"zeros (the spec)": np.broadcast_to(case.params.b_o, got[:1].shape)}, dtype)
    return ok or "other", f"sinks of 0, batch row 0 fully padded: {ok or 'not b_o (a zero context)'}"


def _contract(backend: Any, field: str, candidates: dict[str, Any]) -> tuple[str, str]:
    from conformance.suite.strategies import case_from

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


#: column key -> probe; the findings probes keep their meaning (the diagnosis uses them).
PROBES: dict[str, Callable[[Any], tuple[str, str]]] = {
    "fully_masked_row": fp.fully_masked_rows,
    "mask_polarity": fp.mask_polarity,
    "causal_alignment": causal_alignment,
    "default_scale": default_scale,
    "dropout": dropout,
    "low_precision_output": low_precision_output,
    "dtypes": dtypes,
    "kv_grouping": kv_grouping,
    "non_finite_masked": lambda b: dc.contract_non_finite(b, _measured),
    "decode_bitwise": lambda b: dc.contract_decode(b, _measured),
    "batch_bitwise": lambda b: iv.contract_batch(b, _measured),
    "layout_bitwise": lambda b: iv.contract_layouts(b, _measured),
    "window": contract_window,
    "softcap": contract_softcap,
    "bias_masked_row": lambda b: ("n/a", "measured on the library rows only (through the contract the answer is "
                                         "the dtype's rounding of -1e9 + s, not a convention)"),
    "sink_masked_row": lambda b: contract_sink_masked_row(b),
    "alibi": lambda b: score_terms.contract_alibi(b, _measured),
    "padded_query_rows": fp.padded_query_rows,
    "float64_compute": fp.float64_compute,
}


def entry(value: str, detail: str) -> dict[str, str]:
    """A cell: "n/a" carries its reason in the value too ("n/a: no KV-cache decoding")."""
    return {"value": f"n/a: {detail}" if value == "n/a" else value, "detail": detail or value}


def profile(backend: Any) -> dict[str, dict[str, str]]:
    """Every column of `ALL_COLUMNS` for one backend, through the contract; a probe that crashes is its cell."""
    out = {}
    for key, _ in ALL_COLUMNS:
        try:
            out[key] = entry(*PROBES[key](backend))
        except Exception as e:  # a probe of ours failing is reported in its cell, not raised
            out[key] = entry("probe error", f"{type(e).__name__}: {str(e)[:200]}")
    return out

