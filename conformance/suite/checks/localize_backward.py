"""Which step of the backward is wrong: replay a failing gradient case one exposed VJP at a time.

A backend may expose step VJPs under the step table's names (`attn_weights_vjp`, ...; the
signatures of spec/backward.py, on native arrays, its prepared weights where the spec takes
Params). Each exposed VJP, from step 12 down to 4 (the order the backward runs), gets the
spec's exact cotangents and forward values rounded to the dtype under test, and is compared
with the spec's VJP by the tolerance model; the first that disagrees is named.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from conformance.suite.case import Case, round_to
from conformance.suite.checks import CheckFailure
from conformance.suite.reference import golden_and_plain, step_inputs
from conformance.suite.tolerance import compare
from impls.base import exposed_vjps
from spec.block import backward_trace
from spec.params import Params
from spec.table import STEPS, vjp_call_args


def _flat(result: Any) -> tuple[np.ndarray, ...]:
    """A VJP's result as a flat tuple: a params dict becomes its arrays in field-name order."""
    out = []
    for r in result if isinstance(result, tuple) else (result,):
        out.extend(r[k] for k in sorted(r)) if isinstance(r, dict) else out.append(r)
    return tuple(out)


def _flat_fn(vjp: Callable) -> Callable:
    return lambda *a, **kw: _flat(vjp(*a, **kw))


def _abs(a: Any) -> Any:
    if isinstance(a, Params):
        return a.map(np.abs)
    return np.abs(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a


def first_wrong_vjp(run, case: Case, grad_out: np.ndarray) -> str | None:
    """A sentence naming the first exposed VJP (backward order) that disagrees with the spec, or None."""
    steps = sorted(exposed_vjps(run.backend), reverse=True)
    if not steps or case.dropout_mask is not None:
        return None
    trace = step_inputs(case)
    cot = backward_trace(case.x, case.params, case.config, grad_out, case.key_padding_mask)
    cot = {k: ({n: round_to(a, case.dtype) for n, a in v.items()} if isinstance(v, dict) else round_to(v, case.dtype))
           for k, v in cot.items()}
    for n in steps:
        s = STEPS[n]
        args, kwargs, _ = vjp_call_args(n, trace, cot, case.config, case.key_padding_mask,
                                        tensor=2 if s.per_tensor else 0)  # per-tensor steps: V's
        name = s.vjp.__name__
        try:
            native = [run.weights(case.params) if isinstance(a, Params) else
                      run.native(a) if isinstance(a, np.ndarray) else a for a in args]
            got = run.call(name, getattr(run.backend, name), *native,
                           **{k: run.native(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()})
            run.call("synchronize", run.backend.synchronize)
            if isinstance(got, tuple):  # params' share: a dict by field name, as the spec's
                got = tuple({k: v for k, v in g.items() if v is not None} if isinstance(g, dict) else g for g in got)
            golden, plain = golden_and_plain(_flat_fn(s.vjp), case.dtype, *args, orders=(), **kwargs)
            # a sum of terms that cancel is compared on the terms' size: the VJP on |inputs| (linear steps)
            sizes = _flat(s.vjp(*map(_abs, args), **kwargs)) if n != 8 else golden
            flat = _flat(got)
            if len(flat) != len(golden):
                raise CheckFailure(f"{name}: returned {len(flat)} arrays, expected {len(golden)}")
            for i, (a, g, p, sz) in enumerate(zip(flat, golden, plain, sizes)):
                a = run.to_float64(f"{name}[{i}]", a, g.shape)
                scale = max(float(np.max(np.abs(sz), initial=0.0)), float(np.max(np.abs(g), initial=0.0)))
                c = compare(a, g, p, case.dtype, scale=scale)
                if not c.ok:
                    raise CheckFailure(f"step {n} {name} output {i}: {c.summary()}", c.err, c.allowed)
        except CheckFailure as e:
            return f"first wrong step of the backward: {n} ({name}): {e}"
    return (f"every exposed VJP ({', '.join(map(str, steps))}) agrees with the spec on this example: the error "
            f"is in how backward composes them, or in a step it does not expose")
