"""Memory layouts: the same values handed to the backend in other strides give the contiguous run's result.

Real kernels break on layouts their tests never pass: K/V broadcast with stride 0 over heads
(PyTorch #191937, the memory-efficient kernel off by 19.5), a non-contiguous grad_out (#133671,
CPU flash backward wrong), a kernel reading a slice's buffer as if contiguous. One check draws a
layout per input (`conformance.suite.layouts`: transposed, sliced, reversed, broadcast) for x,
the padding mask, grad_out (when gradients are declared) and the inputs of the exposed steps 7
to 9, runs each path once contiguous and once laid out, and compares them: within the tolerance
model (`Runner.assert_same`), or bit for bit where the backend declares
`Capabilities.layout_invariant`. Which layouts reached the backend's native arrays is read back
from their strides (`Runner.layouts_seen`), and the record lists them: a layout that never
reached the backend reads "not exercised", never a pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from conformance.suite import layouts as L
from conformance.suite import strategies as cs
from conformance.suite.checks import check
from conformance.suite.checks.bitwise import bit_difference
from conformance.suite.grad_reference import golden_and_plain_grads
from conformance.suite.reference import forward_golden_and_plain, golden_and_plain, step_inputs
from impls.base import exposed_steps
from spec.table import STEPS, call_args

#: The steps whose inputs get layouts, where exposed: the scores, the softmax and weights @ V,
#: where fused kernels take strided and broadcast Q, K, V.
LAYOUT_STEPS = (7, 8, 9)
#: What one example runs laid out: forward, the backward (where declared) or one exposed step of
#: 7 to 9 (each a fifth of the examples); a backend without them runs forward instead.
PATHS = ("forward", "backward", *LAYOUT_STEPS)
#: The longest sequence drawn: a layout bug shows at any size, and one key past a 32-key tile
#: (33 = 1 mod 32, PyTorch #191937's count) is enough; longer would cost the default run.
LAYOUT_MAX_TOKENS = 33


def _step_roles(n: int) -> tuple[str, ...]:
    """Step n's array inputs that take a layout (the padding mask is the case's, laid out as such)."""
    return tuple(r for r in STEPS[n].inputs if r in L.BROADCAST_AXIS and r != "key_padding_mask")


@st.composite
def layout_cases(draw, caps, dtype):
    """An everyday case (two sequences or more, for a batch broadcast) and a layout per input."""
    small = replace(caps, max_tokens=min(caps.max_tokens or LAYOUT_MAX_TOKENS, LAYOUT_MAX_TOKENS))
    case = draw(cs.cases(small, dtype, min_batch=2, min_tokens=2))
    roles = ["x", "grad_out", *(r for n in LAYOUT_STEPS for r in _step_roles(n))]
    if case.key_padding_mask is not None:
        roles.insert(1, "key_padding_mask")
    plan = {r: draw(st.sampled_from(L.LAYOUTS)) for r in dict.fromkeys(roles)}
    path = draw(st.sampled_from(PATHS))  # one path an example: the check's cost stays near two forwards
    return case.with_(extra={**case.extra, "layouts": plan, "path": path, "grad_seed": draw(st.integers(0, 2**31 - 1))})


def _broadcast(plan: dict, role: str, a: np.ndarray) -> np.ndarray:
    """a made equal along its broadcast axis when the plan lays `role` out with stride 0."""
    return L.broadcastable(a, L.BROADCAST_AXIS[role]) if plan.get(role) == "broadcast" else a


def _judge(run, what: str, got: np.ndarray, base: np.ndarray, golden: np.ndarray, plain, rows=None) -> None:
    """Laid out vs contiguous: bit for bit if the backend declares layout invariance, else the tolerance model."""
    if getattr(run.backend.capabilities, "layout_invariant", False):
        g, b = (got, base) if rows is None else (got[rows], base[rows])
        run.assert_exact(f"{what}: laid out vs contiguous (layout_invariant declared)", *bit_difference(g, b))
    else:
        run.assert_same(f"{what}: laid out vs contiguous", got, base, golden, plain, rows)


def _said(plan: dict, roles) -> str:
    return ", ".join(f"{r} {plan[r]}" for r in roles if r in plan)


@check(step=None, strategy=layout_cases)
def layouts_match_contiguous(run, case):
    """Inputs in other memory layouts (transposed, sliced, negative and zero strides) give the contiguous run's result."""
    plan = case.extra["layouts"]
    kpm = case.key_padding_mask
    case = case.with_(x=_broadcast(plan, "x", case.x), key_padding_mask=None if kpm is None else
                      _broadcast(plan, "key_padding_mask", kpm))
    rows = run.property_rows(case.config, case.key_padding_mask, case.B, case.T)
    have = set(exposed_steps(run.backend))
    path = case.extra["path"]
    if path == "backward" and run.backend.capabilities.gradients:
        rng = np.random.default_rng(case.extra["grad_seed"])
        g = _broadcast(plan, "grad_out", rng.standard_normal((case.B, case.T, case.config.d_out)))  # (B, T, d_out)
        g = np.where(rows[..., None], g, 0.0)  # convention-decided rows take no gradient, as in the gradient checks
        base_g = run.grads(case, g)
        with run.laid_out(plan):
            got_g = run.grads(case, g)
        gold, pl = golden_and_plain_grads(case, g)
        for name in gold:
            _judge(run, f"backward {name} ({_said(plan, ('x', 'key_padding_mask', 'grad_out'))})",
                   got_g[name], base_g[name], gold[name], pl[name])
    elif path in have and path in LAYOUT_STEPS:
        _step(run, case, plan, path)
    else:
        golden, plain = forward_golden_and_plain(case)  # the allowance's scale
        base = run.forward(case)
        with run.laid_out(plan):
            got = run.forward(case)
        _judge(run, f"forward ({_said(plan, ('x', 'key_padding_mask'))})", got, base, golden, plain, rows)


def _step(run, case, plan: dict, n: int) -> None:
    """Step n on the spec's trace, its inputs laid out vs contiguous."""
    s = STEPS[n]
    trace = step_inputs(case)
    laid = {r: _broadcast(plan, r, trace[r]) for r in _step_roles(n)}
    tr = {**trace, **laid}
    args, kwargs = call_args(n, tr, case.config, case.key_padding_mask, dropout_mask=case.dropout_mask)
    gold, pl = golden_and_plain(s.fn, case.dtype, *args, **kwargs)
    base = run.table_step(n, case, tr)
    with run.laid_out(plan):
        got = run.table_step(n, case, tr)
    _judge(run, f"step {n} {s.name} ({_said(plan, laid)})", got, base, gold, pl)
