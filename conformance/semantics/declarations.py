"""The semantic profile's measured declarations: does a library (or a backend, through its
contract) ignore non-finite masked inputs, and does decoding give the forward's bits?

These are the promises a backend may declare (`Capabilities.non_finite_masked_inputs`,
`Capabilities.decode_invariant`); here they are measured on every library and backend, declared
or not, so the report says who has them. Nothing is cleaned up on the way: the NaN and +-inf
reach the library (or the backend's `forward`) as they are.

Library probes call `raw.attend` (probes.py's interface): q, k and v of padded keys, or of future
tokens under the causal option, set to NaN, +inf or -inf, the other rows compared with the clean
call; decoding is the last query alone over every key against the causal call's last row. The
contract probes poison the inputs x of padded and future tokens (`checks.poison.poisoned_tokens`)
and decode through `prefill` / `decode`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

#: The non-finite values each probe puts in the masked positions.
FILLS = {"NaN": np.nan, "+inf": np.inf, "-inf": -np.inf}
#: Close enough to the clean call to be "ignored": the same library on the same finite rows, so the
#: only difference allowed is float32 rounding of a reordered sum (inputs O(1), a handful of keys).
SAME = 1e-4


def _verdict(parts: dict[str, str]) -> tuple[str, str]:
    """(value, detail) from {"padding NaN": "ignored" | what happened, ...}."""
    if not parts:
        return "n/a", "neither key padding nor causal masking to put them in"
    detail = "; ".join(f"{p}: {r}" for p, r in parts.items())
    leaks = sorted({p.split()[0] for p, r in parts.items() if r != "ignored" and not r.startswith(("raises", "not"))})
    other = sorted({p.split()[0] for p, r in parts.items() if r.startswith(("raises", "not"))})
    value = f"leaks ({', '.join(leaks)})" if leaks else "ignored" if not other else ""
    if other:
        value += ("; " if value else "") + f"{', '.join(other)} not measured (raises)"
    return value, detail


def _compare(out: np.ndarray | None, err: str | None, clean: np.ndarray, rows: Any) -> str:
    if err:
        return f"raises {err}"
    a, b = out[rows].reshape(int(rows.sum()), -1), clean[rows].reshape(int(rows.sum()), -1)  # (rows, features)
    if np.isnan(a).any():
        return f"NaN in {int(np.isnan(a).any(-1).sum())} of {a.shape[0]} compared rows"
    if not np.isfinite(a).all():
        return "inf in the compared rows"
    d = float(np.abs(a - b).max(initial=0.0))
    return "ignored" if d <= SAME else f"changed by {d:.3g}"


# -- the library probes ----------------------------------------------------------------------------
def library_non_finite(raw: Any, polarity: str, inputs: Callable, call: Callable) -> tuple[str, str]:
    """Padded keys (the library's own mask polarity) and causal future tokens holding NaN / +-inf.
    `inputs` and `call` are the library probes' own (semantics/probes.py, which calls this)."""
    q, k, v = inputs(2, 2, 5, 5, 4, seed=30)
    parts: dict[str, str] = {}
    take = np.ones((2, 5), dtype=bool)
    take[0, 3:] = False  # right padding
    take[1, 0] = False  # left padding
    known = polarity in ("True = take part", "True = masked out")
    mask = ~take if polarity == "True = masked out" else take
    t = 2  # causal: rows 0..t compared, tokens t+1.. poisoned
    future = np.zeros((1, 5), dtype=bool)
    future[:, t + 1:] = True
    for kind, bad, kw in (("padding", ~take, {"mask": mask}), ("causal", np.broadcast_to(future, (2, 5)), {"causal": True})):
        if kind == "padding" and not known:
            parts["padding"] = f"not measured (mask polarity: {polarity})"
            continue
        clean, err = call(lambda kw=kw: raw.attend(q, k, v, **kw))
        if err:
            parts[kind] = f"raises {err}"
            continue
        rows = ~bad  # (B, Tq): the clean queries' rows
        for name, f in FILLS.items():
            sel = bad[:, None, :, None]  # (B, 1, T, 1)
            qq, kk, vv = (np.where(sel, f, a) for a in (q, k, v))
            out, err = call(lambda qq=qq, kk=kk, vv=vv, kw=kw: raw.attend(qq, kk, vv, **kw))
            parts[f"{kind} {name}"] = _compare(None if out is None else out.transpose(0, 2, 1, 3), err,
                                               clean.transpose(0, 2, 1, 3), rows)  # (B, Tq, H, hd)
    return _verdict(parts)


def library_decode(raw: Any, inputs: Callable, call: Callable) -> tuple[str, str]:
    """The last query alone over every key (a decode step) against the causal call's last row, bit
    for bit; `inputs` and `call` as in `library_non_finite`."""
    q, k, v = inputs(2, 2, 24, 24, 16, seed=31)
    notes, differs = [], []
    for dtype in ("float64", "float32"):
        full, err = call(lambda dtype=dtype: raw.attend(q, k, v, causal=True, dtype=dtype))
        last, err2 = call(lambda dtype=dtype: raw.attend(q[:, :, -1:], k, v, dtype=dtype))
        if err or err2:
            notes.append(f"{dtype}: raises {err or err2}")
            continue
        n = int((full[:, :, -1:] != last).sum())
        notes.append(f"{dtype}: {'the same bits' if n == 0 else f'{n} of {last.size} elements differ'}")
        if n:
            differs.append(dtype)
    value = "raises" if len(notes) == sum("raises" in n for n in notes) else \
        (f"differs ({', '.join(differs)})" if differs else "equal")
    return value, "T=24, head_dim 16, last query decoded alone vs the causal forward's last row: " + "; ".join(notes)


# -- the contract probes ---------------------------------------------------------------------------
def contract_non_finite(backend: Any, measured: Callable) -> tuple[str, str]:
    """x of padded tokens and, under causal attention, of tokens 4.. holding NaN / +-inf, through forward."""
    from conformance.findings import probes as fp
    from conformance.suite.checks.poison import poisoned_tokens

    caps = backend.capabilities
    parts: dict[str, str] = {}
    kinds = ([("padding", False)] if caps.key_padding_mask and caps.non_causal else []) + \
            ([("causal", True)] if caps.causal else [])
    for kind, causal in kinds:
        kpm = None
        if kind == "padding" or caps.key_padding_mask:
            kpm = np.ones((2, 6), dtype=bool)
            kpm[0, 4:] = False  # right padding
            kpm[1, :1] = False  # left padding
        case = fp._case(backend, causal, kpm, seed=32)
        case = case.with_(extra={**case.extra, "t": 3 if causal else case.T - 1})
        bad = poisoned_tokens(case)  # (B, T)
        clean, err = measured(backend, "non-finite probe", lambda r: r.forward(case), case.dtype)
        if err:
            parts[kind] = f"raises {err}"
            continue
        for name, f in FILLS.items():
            x = np.where(bad[..., None], f, case.x)
            out, err = measured(backend, "non-finite probe", lambda r, x=x: r.forward(case.with_(x=x)), case.dtype)
            parts[f"{kind} {name}"] = _compare(out, err, clean, ~bad)
    return _verdict(parts)


def contract_decode(backend: Any, measured: Callable) -> tuple[str, str]:
    """A prefill of 12 tokens, 12 decoded one at a time, bit for bit against the forward, each declared dtype."""
    caps = backend.capabilities
    if not caps.kv_cache:
        return "n/a", "no KV-cache decoding (Capabilities.kv_cache)"
    if not caps.causal:
        return "n/a", "causal attention not supported"
    from conformance.suite.checks.bitwise import bit_difference
    from conformance.suite.checks.cache import decode_outputs
    from conformance.suite.strategies import case_from
    from spec.config import AttentionConfig

    config = AttentionConfig(d_in=32, d_out=32, n_heads=2, causal=True)
    notes, differs = [], []
    for dtype in caps.dtypes:
        case = case_from(config, 2, 24, dtype, seed=33)
        case = case.with_(extra={"prefill": 12, "chunks": [1] * 12})
        got, err = measured(backend, "decode probe", lambda r, case=case: (decode_outputs(r, case), r.forward(case)), dtype)
        if err:
            notes.append(f"{dtype}: raises {err}")
            continue
        worst, where = bit_difference(got[0], got[1][:, 12:])
        notes.append(f"{dtype}: " + (f"differs{where}" if worst else "the same bits"))
        if worst:
            differs.append(dtype)
    value = "raises" if all("raises" in n for n in notes) else \
        (f"differs ({', '.join(differs)})" if differs else "equal")
    return value, "T=24, prefill 12, 12 tokens decoded one at a time vs the forward: " + "; ".join(notes)
