"""The golden (the spec in float64) and the plain reference (correct orders of it in dtype D)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from conformance.suite import memo
from conformance.suite.timeshare import spent
from conformance.suite.case import Case, round_to
from conformance.suite.judgement import active
from conformance.suite.orders import FORWARD_ORDERS, ORDERS
from conformance.suite.tolerance import Plain, eps
from spec import block as spec_forward
from spec import conventions as conv
from spec.config import numpy_dtype
from spec.params import Params
from spec.scores import BiasArray
from spec.table import Trace


def cast(a: Any, dtype: str) -> Any:
    """Arrays (also inside tuples and Params) in dtype D; bool arrays and others untouched."""
    if isinstance(a, Params):
        return a.map(lambda v: v.astype(numpy_dtype(dtype)))
    if isinstance(a, tuple):
        return tuple(cast(v, dtype) for v in a)
    if isinstance(a, np.ndarray) and a.dtype != np.bool_:
        return a.astype(numpy_dtype(dtype))
    return a


def to_f64(a: Any) -> Any:
    if isinstance(a, tuple):
        return tuple(to_f64(v) for v in a)
    return np.asarray(a, dtype=np.float64)


def _golden_cast(a: Any, dtype: str) -> Any:
    # float64 under test: the golden needs more precision than the plain reference, or the
    # plain reference's error is 0 and only the floor is left; x86's long double has 64 bits
    if dtype != "float64":
        return a
    if isinstance(a, Params):
        return a.map(lambda v: v.astype(np.longdouble))
    if isinstance(a, tuple):
        return tuple(_golden_cast(v, dtype) for v in a)
    if isinstance(a, np.ndarray) and a.dtype == np.float64:
        return a.astype(np.longdouble)
    return a


#: Runs of the spec's own order on ulp-moved inputs: they measure the problem's conditioning.
PERTURBED_RUNS = 1


def _perturb(a: Any, dtype: str, rng: np.random.Generator) -> Any:
    """Inputs moved by about one unit in the last place of dtype (bool masks untouched)."""
    if isinstance(a, Params):
        return a.map(lambda v: _perturb(v, dtype, rng))
    if isinstance(a, tuple):
        return tuple(_perturb(v, dtype, rng) for v in a)
    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
        moved = rng.uniform(-1, 1, a.shape)  # a * (1 + eps * u), in place: a large example's
        moved *= eps(dtype)                  # weights are tens of MB, each temporary as much
        moved += 1
        moved *= a
        return moved
    return a


def golden_and_plain(fn: Callable, dtype: str, *args: Any, orders: tuple[Callable, ...] | None = None,
                     exact_orders: bool = False, **kwargs: Any) -> tuple[Any, Any]:
    """fn on the exact arguments (golden) and the plain reference of fn in dtype D.

    The golden is computed in float64, or in long double when float64 itself is under test.
    The plain reference is a `Plain`: several runs in D that all compute fn correctly, which
    a comparison measures on exactly the part of the output it compares (the worst run
    there). The runs are the spec's own order on the inputs and on inputs moved by one ulp
    of D (the problem's conditioning), and each other correct order of fn
    (`conformance.suite.orders.ORDERS`, or `orders`) on its own ulp-moved inputs. So a backend is
    allowed what correct implementations in D may do (where they apply the scale, how they
    normalise the softmax, the order of their sums), not only what the spec's order does.
    `exact_orders`: each other order on the exact inputs too, not only on moved ones (KV-cache
    decoding, `conformance.suite.cache_reference`).
    """
    orders = ORDERS.get(fn, ()) if orders is None else orders
    d = active().plain_dtype(dtype)  # D, or the dtype a declared convention or a hypothesis computes in
    with spent("memo"):
        key = memo.key(fn, dtype, d, orders, PERTURBED_RUNS, args, kwargs, exact_orders)
        remembered = memo.get(key)  # the same inputs, earlier in this worker (another backend, another check)
    if remembered is not None:
        return remembered
    with spent("golden"):
        golden = to_f64(fn(*(_golden_cast(a, dtype) for a in args),
                           **{k: _golden_cast(v, dtype) for k, v in kwargs.items()}))
    rng = np.random.default_rng(0)

    def run(f: Callable, moved: bool) -> Any:
        a_ = [cast(_perturb(a, d, rng) if moved else a, d) for a in args]
        kw = {k: cast(_perturb(v, d, rng) if moved else v, d) for k, v in kwargs.items()}
        with np.errstate(all="ignore"):  # a run that overflows in D counts as no error (see plain_error)
            return to_f64(f(*a_, **kw))

    with spent("plain"):
        runs = [run(fn, False)] + [run(fn, True) for _ in range(PERTURBED_RUNS)] + [run(f, True) for f in orders]
        runs += [run(f, False) for f in orders] if exact_orders else []
    if isinstance(golden, tuple):
        result = golden, tuple(Plain(tuple(r[i] for r in runs)) for i in range(len(golden)))
    else:
        result = golden, Plain(tuple(runs))
    with spent("memo"):
        memo.put(key, result)
    return result


def step_inputs(case: Case) -> Trace:
    """The spec's trace on the case, in float64, each value rounded to the dtype under test.

    A backend's step n is called on these values (`spec.table.call_args`): it then sees the
    numbers an exact implementation of the earlier steps would hand it in dtype D.
    """
    args = (case.x, case.params, case.config, case.key_padding_mask, case.dropout_mask)
    with spent("memo"):  # the step checks all draw the same cases, and so do backends alike
        key = memo.key(spec_forward.intermediates, case.dtype, case.dtype, (), 0, args, {})
        remembered = memo.get(key)
    if remembered is not None:
        return remembered
    with spent("golden"):
        trace = Trace({name: _round(v, case.dtype) for name, v in spec_forward.intermediates(*args).items()})
    with spent("memo"):
        memo.put(key, trace)
    return trace


def _round(v: Any, dtype: str) -> Any:
    if isinstance(v, tuple):
        return tuple(_round(a, dtype) for a in v)
    if isinstance(v, np.ndarray):
        return round_to(v, dtype)
    return v


def forward_golden_and_plain(case: Case, **overrides: Any) -> tuple[np.ndarray, Plain]:
    """spec.forward on the case (or overrides) in float64 and in the case's dtype.

    Under a judgement (`conformance.suite.judgement`) the padding mask is read as it says and
    the rows a convention decides hold the convention's values, in the golden and every plain run.
    """
    j = active()
    x = overrides.get("x", case.x)
    params = overrides.get("params", case.params)
    config = overrides.get("config", case.config)
    kpm = j.mask(overrides.get("key_padding_mask", case.key_padding_mask))
    dmask = overrides.get("dropout_mask", case.dropout_mask)
    golden, plain = golden_and_plain(spec_forward.forward, case.dtype, x, params, config, kpm, dmask,
                                     orders=FORWARD_ORDERS)
    adjusted = conv.adjusted_rows(j.conventions, x, params, config, kpm)
    if adjusted is None:
        return golden, plain
    rows, values = adjusted
    d = j.plain_dtype(case.dtype)
    with np.errstate(invalid="ignore"):
        rounded = round_to(values, d)
    golden = np.where(rows[..., None], values, golden)
    return golden, Plain(tuple(np.where(rows[..., None], rounded, r) for r in plain.runs))


def leading_golden_and_plain(case: Case, batch: int | None = None, tokens: int | None = None
                             ) -> tuple[np.ndarray, Plain]:
    """`forward_golden_and_plain` of the first `batch` batch elements and `tokens` tokens only.

    For a property that compares only those rows (causality and prefix consistency the first
    tokens of a causal case, batch independence batch element 0), the spec's outputs there do
    not depend on the rest: the golden is the same, and each plain run is the same correct
    order in D on the same numbers, without the rows nobody compares (the references were most
    of these checks' time). `tokens` needs a causal case: a later key is visible otherwise.
    """
    if tokens is not None and not case.config.causal:
        raise ValueError(f"tokens={tokens}: only a causal case's first outputs are independent of later tokens")
    b = case.B if batch is None else batch
    t = case.T if tokens is None else tokens
    if isinstance(case.config.bias, BiasArray):  # its axes may be the batch's and tokens': cut from the whole
        golden, plain = forward_golden_and_plain(case)
        return golden[:b, :t], plain[:b, :t]  # (b, t, d_out)
    kpm, dmask = case.key_padding_mask, case.dropout_mask
    return forward_golden_and_plain(case.with_(
        x=case.x[:b, :t],
        key_padding_mask=None if kpm is None else kpm[:b, :t],
        dropout_mask=None if dmask is None else dmask[:b, :, :t, :t]))  # (b, H, t, t)
