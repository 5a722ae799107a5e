"""Which step is wrong: replay a failing end-to-end case one exposed step at a time.

Each exposed step gets the spec's exact output of the step before it (rounded to the dtype
under test) and is compared with the golden by the tolerance model; the first step that
disagrees is named in the failure message. Backends that expose no steps get no diagnosis.
"""

from __future__ import annotations

from conformance.suite.case import Case
from conformance.suite.checks import CheckFailure
from conformance.suite.reference import golden_and_plain, step_inputs
from impls.base import exposed_steps
from spec.table import STEPS, call_args


def step_matches_spec(run, case: Case, n: int, trace: dict, *, tensor: int = 0, what: str = "") -> None:
    """The backend's step n on the trace's values against the spec's step n, by the tolerance
    model, each output compared on its own; a CheckFailure names the step and the output."""
    s = STEPS[n]
    args, kwargs = call_args(n, trace, case.config, case.key_padding_mask, tensor=tensor,
                             dropout_mask=case.dropout_mask)
    got = run.table_step(n, case, trace, tensor=tensor)
    golden, plain = golden_and_plain(s.fn, case.dtype, *args, **kwargs)
    label = f"step {n} {s.name}{what}"
    if len(s.outputs) > 1 and not s.per_tensor:
        for out_name, g_, a_, p_ in zip(s.outputs, golden, got, plain):
            run.assert_close(f"{label} {out_name}", a_, g_, p_)
    else:
        run.assert_close(label, got, golden, plain)


def first_wrong_step(run, case: Case) -> str | None:
    """A sentence naming the first exposed step that disagrees with the spec, or None."""
    steps = [n for n in exposed_steps(run.backend) if n >= 4]
    if not steps or case.dropout_mask is not None:
        return None
    trace = step_inputs(case)
    for n in steps:
        s = STEPS[n]
        try:
            # per-tensor steps (5, 6) are replayed on V: Q and K take the same code path
            step_matches_spec(run, case, n, trace, tensor=2 if s.per_tensor else 0)
        except CheckFailure as e:
            return f"first wrong step: {n} ({s.name}): {e}"
    return f"every exposed step ({', '.join(map(str, steps))}) agrees with the spec on this example: " \
           f"the error is in how forward composes them, or in a step it does not expose"
