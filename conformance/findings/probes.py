"""Probes of a backend through its contract: what it does where libraries legitimately differ.

Each probe builds a tiny case whose candidate answers are far apart, calls the backend the way
the suite does (`Runner`: conversion at the edges, every misbehaviour a `CheckFailure`), and
names the candidate its output matches. They serve the diagnosis (which convention explains a
failure) and the semantic profile of any backend, plug-ins included. A probe never raises:
what it could not measure is its answer ("n/a: ...", "raises: ...").
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from conformance.suite.calls import Runner
from conformance.suite.case import Case
from conformance.suite.checks import CheckFailure
from conformance.suite.judgement import Judgement, judged_under
from conformance.suite.process_state import restored_state
from conformance.suite.reference import forward_golden_and_plain
from conformance.suite.strategies import case_from
from conformance.suite.tolerance import eps
from conformance.suite.watchdog import BackendHang, time_limit
from spec import conventions as conv
from spec.config import AttentionConfig

PROBE_LIMIT_S = 20.0  # CPU seconds for one probe's forward (tiny inputs; a hang is an answer)


def probe_dtype(backend: Any) -> str:
    """The dtype probes run in: float32 where declared (rounding far below the candidates' gaps)."""
    dtypes = backend.capabilities.dtypes
    return "float32" if "float32" in dtypes else "float64" if "float64" in dtypes else dtypes[0]


def _case(backend: Any, causal: bool, kpm: np.ndarray | None, seed: int, dtype: str | None = None) -> Case:
    B, T = (kpm.shape if kpm is not None else (2, 6))
    config = AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=causal)
    case = case_from(config, B, T, dtype or probe_dtype(backend), seed=seed)
    return case.with_(key_padding_mask=kpm)


def forward_unjudged(backend: Any, case: Case) -> tuple[np.ndarray | None, str | None]:
    """The backend's forward on the case, judged by nobody: (output, None) or (None, what went wrong)."""
    try:
        with restored_state(), judged_under(Judgement()), time_limit(PROBE_LIMIT_S, f"probe on {backend.name}"):
            return Runner(backend, case.dtype).forward(case), None
    except (CheckFailure, BackendHang) as e:
        return None, str(e).splitlines()[0][:300]
    except Exception as e:  # a probe is a measurement: nothing it meets may stop the caller
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def _match(got: np.ndarray, candidates: dict[str, np.ndarray], dtype: str) -> str | None:
    """The candidate `got` equals within a few hundred ulps of dtype (relative to its scale), or None."""
    for name, c in candidates.items():
        both_nan = np.isnan(got) & np.isnan(c)
        if np.isnan(c).all() and both_nan.all():
            return name
        scale = max(1.0, float(np.nanmax(np.abs(c), initial=0.0)))
        d = np.where(both_nan, 0.0, np.abs(got - c))
        if np.all(np.isfinite(d)) and float(d.max(initial=0.0)) <= 256 * eps(dtype) * scale:
            return name
    return None


def _causal(backend: Any) -> bool:
    return bool(backend.capabilities.causal)


def fully_masked_rows(backend: Any) -> tuple[str, str]:
    """(value, detail): what a query with no visible key gets, named from `spec.conventions.MENU`."""
    caps = backend.capabilities
    if not caps.key_padding_mask:
        return "n/a", "key padding masks not supported: no query can be left without a visible key"
    causal = _causal(backend)
    kpm = np.ones((2, 6), dtype=bool)
    if causal:
        kpm[0, :2] = False  # left padding: queries 0 and 1 of batch element 0 see nothing
    else:
        kpm[0, :] = False  # every key of batch element 0 padded
    case = _case(backend, causal, kpm, seed=11)
    got, err = forward_unjudged(backend, case)
    if err:
        return "raises", err
    empty = conv.empty_rows(case.config, case.B, case.T, case.T, kpm)  # (B, T)
    golden, _ = forward_golden_and_plain(case)
    candidates = {"zero_context": golden[empty]}
    for value in list(conv.MENU["fully_masked_rows"])[1:]:
        rows, values = conv.adjusted_rows({"fully_masked_rows": value}, case.x, case.params, case.config, kpm)
        candidates[value] = values[empty]
    found = _match(got[empty], candidates, case.dtype)
    where = f"{int(empty.sum())} queries with no visible key ({'causal, left padding' if causal else 'all keys padded'})"
    if found is None:
        g = got[empty]
        return "other", (f"{where}: outputs neither b_o, the mean of V, NaN nor 0 "
                         f"(max |output| {np.nanmax(np.abs(g), initial=0.0):.6g}, NaN in {int(np.isnan(g).sum())})")
    return found, f"{where}: {conv.MENU['fully_masked_rows'][found]}"


def padded_query_rows(backend: Any) -> tuple[str, str]:
    """(value, detail): whether a padded query token that sees keys gets its output computed."""
    caps = backend.capabilities
    if not caps.key_padding_mask:
        return "n/a", "key padding masks not supported"
    kpm = np.ones((2, 6), dtype=bool)
    kpm[0, 4:] = False  # right padding: queries 4 and 5 are padding but see keys 0..3
    case = _case(backend, _causal(backend), kpm, seed=12)
    got, err = forward_unjudged(backend, case)
    if err:
        return "raises", err
    padded = ~kpm
    golden, _ = forward_golden_and_plain(case)
    found = _match(got[padded], {"computed": golden[padded], "zero_output": np.zeros_like(golden[padded])}, case.dtype)
    if found is None:
        return "other", "padded queries' outputs are neither the spec's nor zeros"
    return found, conv.MENU["padded_query_rows"][found]


def mask_polarity(backend: Any) -> tuple[str, str]:
    """(value, detail): how the key padding mask is read: as the spec, inverted, or ignored."""
    if not backend.capabilities.key_padding_mask:
        return "n/a", "key padding masks not supported"
    kpm = np.array([[True, False, True, False, True, True]] * 2)  # both it and its inverse leave keys
    case = _case(backend, False if backend.capabilities.non_causal else True, kpm, seed=13)
    got, err = forward_unjudged(backend, case)
    if err:
        return "raises", err
    readings = {"True = may attend": kpm, "True = masked out": ~kpm, "ignored": None}
    rows = kpm  # (B, T): compare the queries that are not padding (a backend may zero padded queries' rows)
    candidates = {}
    for name, m in readings.items():
        candidates[name] = forward_golden_and_plain(case.with_(key_padding_mask=m))[0][rows]
    found = _match(got[rows], candidates, case.dtype)
    return (found or "other"), {"True = may attend": "as the spec (and SDPA, JAX)",
                                "True = masked out": "inverted: True masks the key out (nn.MultiheadAttention's polarity)",
                                "ignored": "the key padding mask has no effect on the output"}.get(found, "none of the readings")


def output_dtypes(backend: Any) -> tuple[str, str]:
    """(value, detail): the output dtype for each declared low-precision dtype, with and without a mask."""
    parts, changed = [], False
    for dtype in ("float16", "bfloat16"):
        if dtype not in backend.capabilities.dtypes:
            continue
        for kpm in (None, np.ones((2, 6), dtype=bool)) if backend.capabilities.key_padding_mask else (None,):
            case = _case(backend, _causal(backend), kpm, seed=14, dtype=dtype)
            _, err = forward_unjudged(backend, case)
            with_mask = " with a mask" if kpm is not None else ""
            if err and "returned dtype" in err:
                changed = True
                parts.append(f"{dtype}{with_mask} -> {err.split('returned dtype ')[1].split(',')[0]}")
            elif err:
                parts.append(f"{dtype}{with_mask}: {err[:80]}")
            else:
                parts.append(f"{dtype}{with_mask} -> {dtype}")
    if not parts:
        return "n/a", "no low-precision dtype declared"
    # a forward that failed for another reason says nothing about the dtype: only a widened output is "changed"
    return ("changed" if changed else "input dtype"), "; ".join(parts)


def float64_compute(backend: Any) -> tuple[str, str]:
    """(value, detail): the precision float64 inputs are computed in, from the error against the spec."""
    if "float64" not in backend.capabilities.dtypes:
        return "n/a", "float64 not declared"
    case = _case(backend, _causal(backend), None, seed=15, dtype="float64")
    got, err = forward_unjudged(backend, case)
    if err:
        return "raises", err
    golden, _ = forward_golden_and_plain(case)
    rel = float(np.max(np.abs(got - golden)) / max(np.max(np.abs(golden)), 1e-300))
    value = "float64" if rel < 1e-12 else "float32" if rel < 1e-5 else "other"
    return value, f"relative error {rel:.2e} against the spec in long double"


PROBES: dict[str, Callable[[Any], tuple[str, str]]] = {
    "fully_masked_rows": fully_masked_rows,
    "padded_query_rows": padded_query_rows,
    "mask_polarity": mask_polarity,
    "output_dtypes": output_dtypes,
    "float64_compute": float64_compute,
}


def run_all(backend: Any) -> dict[str, tuple[str, str]]:
    """Every probe on one backend: name -> (value, detail)."""
    return {name: fn(backend) for name, fn in PROBES.items()}
