"""Which step is wrong: replay a failing end-to-end case one exposed step at a time.

Each exposed step gets the spec's exact output of the step before it (rounded to the dtype
under test) and is compared with the golden by the tolerance model; the first step that
disagrees is named in the failure message. Backends that expose no steps get no diagnosis.
"""

from __future__ import annotations

from conformance.case import Case
from conformance.checks import CheckFailure
from conformance.reference import golden_and_plain, step_inputs
from impls.base import exposed_steps
from spec import steps as S
from spec.shapes import expected_shapes


def _step_call(n: int, case: Case, inp: dict, run):
    """(backend arguments, spec function, spec arguments) for step n on the case."""
    cfg = case.config
    Q, K, V = inp[6]
    kpm = {} if case.key_padding_mask is None else {"key_padding_mask": case.key_padding_mask}
    table = {
        4: (("project_qkv", case.x, run.weights(case.params)), {}, S.project_qkv, (case.x, case.params)),
        5: (("split_heads", inp[4][0], cfg.n_heads), {}, S.split_heads, (inp[4][0], cfg.n_heads)),
        6: (("group_by_heads", inp[5][0]), {}, S.group_by_heads, (inp[5][0],)),
        7: (("attn_scores", Q, K), {}, S.attn_scores, (Q, K)),
        8: (("attn_weights", inp[7], cfg), kpm, S.attn_weights, (inp[7], cfg, case.key_padding_mask)),
        9: (("context", inp[8], V), {}, S.context, (inp[8], V)),
        10: (("permute_back", inp[9]), {}, S.permute_back, (inp[9],)),
        11: (("concat_heads", inp[10]), {}, S.concat_heads, (inp[10],)),
        12: (("out_proj", inp[11], run.weights(case.params)), {}, S.out_proj, (inp[11], case.params)),
    }
    return table[n]


def first_wrong_step(run, case: Case) -> str | None:
    """A sentence naming the first exposed step that disagrees with the spec, or None."""
    steps = [n for n in exposed_steps(run.backend) if n >= 4]
    if not steps or case.dropout_mask is not None:
        return None
    inp = step_inputs(case)
    for n in steps:
        (name, *args), kwargs, fn, spec_args = _step_call(n, case, inp, run)
        shapes = expected_shapes(n, case.config, case.B, case.T)
        shapes = shapes if n == 4 else shapes[:1]
        try:
            got = run.step(name, *args, shapes=shapes, **kwargs)
            golden, plain = golden_and_plain(fn, case.dtype, *spec_args)
            if n == 4:
                for g_, a_, p_ in zip(golden, got, plain):
                    run.assert_close(f"step 4 {name}", a_, g_, p_)
            else:
                run.assert_close(f"step {n} {name}", got, golden, plain)
        except CheckFailure as e:
            return f"first wrong step: {n} ({name}): {e}"
    return f"every exposed step ({', '.join(map(str, steps))}) agrees with the spec on this example: " \
           f"the error is in how forward composes them, or in a step it does not expose"
