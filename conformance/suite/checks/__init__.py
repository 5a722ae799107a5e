"""The catalogue of conformance checks: every property, named, with its step and one line.

A check is a function `(run: Runner, case: Case) -> None` that raises `CheckFailure` when the
backend breaks the property, plus the strategy that draws its cases and the capabilities it
needs. `CHECKS` keeps them in a fixed order: the end-to-end comparison first (it kills most
bugs), then each step from 3 to 12, then the other end-to-end properties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from hypothesis import strategies as st

from impls.base import exposed_steps
from spec.table import STEPS


class CheckFailure(AssertionError):
    """A property does not hold; the message says which, by how much, and where."""

    def __init__(self, message: str, max_error: float | None = None, tolerance: float | None = None,
                 where: tuple[int, ...] | None = None):
        super().__init__(message)
        self.max_error = max_error
        self.tolerance = tolerance
        self.where = where  # index of the worst element in the compared array, when one was compared


@dataclass(frozen=True)
class Check:
    name: str
    step: int | None  # None: end to end
    doc: str
    fn: Callable
    strategy: Callable  # (capabilities, dtype) -> SearchStrategy[Case]
    needs_step: bool  # the backend must expose `step`
    examples: Callable | None = None  # (capabilities, dtype) -> cases run first, before the drawn ones
    group: str = "forward"  # the report's group of checks: "forward" or "gradients"
    needs: tuple[str, ...] = ()  # capabilities it needs (impls.base.NEEDS): data, turned into a reason there
    steps: tuple[int, ...] = ()  # steps it calls besides its own (a fused kernel may not expose them)
    any_step: bool = False  # steps: any one of them is enough (else all)

    def unsupported(self, backend: object, dtype: str) -> str | None:
        caps = backend.capabilities
        if dtype not in caps.dtypes:
            return f"dtype {dtype} not declared (declares {', '.join(caps.dtypes)})"
        if self.needs_step and self.step not in exposed_steps(backend):
            return f"step {self.step} ({STEPS[self.step].name}) not exposed"
        reason = caps.unmet(self.needs)
        if reason is None and self.steps:
            have = set(exposed_steps(backend))
            missing = [n for n in self.steps if n not in have]
            if missing and (not self.any_step or len(missing) == len(self.steps)):
                reason = (f"steps {' to '.join(map(str, (self.steps[0], self.steps[-1])))} not exposed (fused attention)"
                          if self.any_step else f"steps {missing} not exposed")
        return reason

    def cases(self, backend: object, dtype: str) -> st.SearchStrategy:
        return self.strategy(backend.capabilities, dtype)

    def explicit_cases(self, backend: object, dtype: str) -> list:
        return [] if self.examples is None else self.examples(backend.capabilities, dtype)


CHECKS: dict[str, Check] = {}


def everyday_cases(caps, dtype: str):
    """The plain strategy most checks use: moderate values, every option the backend declares."""
    from conformance.suite import strategies as cs

    return cs.cases(caps, dtype)


def check(step: int | None, strategy: Callable, needs_step: bool = True,
          examples: Callable | None = None, group: str = "forward",
          needs: tuple[str, ...] = (), steps: tuple[int, ...] = (), any_step: bool = False):
    """Register `fn` as a check; its name is the function name, its doc the docstring's line.

    `needs`: the capabilities it needs, by name (`impls.base.NEEDS`); `steps`: the steps it calls
    besides its own (all of them, or any one with `any_step`): both are data, turned into the
    unsupported reason by `Capabilities.unmet` and here. `examples(capabilities, dtype)` gives fixed cases
    Hypothesis runs before drawing any.
    """

    def register(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        if not doc:
            raise ValueError(f"check {fn.__name__} needs a one-line docstring")
        CHECKS[fn.__name__] = Check(fn.__name__, step, doc, fn, strategy,
                                    needs_step and step is not None, examples, group,
                                    tuple(needs), tuple(steps), any_step)
        return fn

    return register


def catalogue() -> list[Check]:
    """Every check, in running order (importing the modules that define them)."""
    from conformance.suite.checks import dropout, end_to_end, grouped, steps  # noqa: F401  (registration)
    from conformance.suite.checks import bitwise, poison  # noqa: F401  (registration)
    from conformance.suite.checks import layouts  # noqa: F401  (registration)
    from conformance.suite.checks import windows  # noqa: F401  (registration)
    from conformance.suite.checks import scores  # noqa: F401  (registration)
    from conformance.suite.checks import gradients  # noqa: F401  (registration)
    from conformance.suite.checks import cache  # noqa: F401, I001  (registered last: run after the forward's checks)

    index = {name: i for i, name in enumerate(CHECKS)}

    def order(c: Check) -> tuple:
        # matches_spec first: it kills most bugs at once; then steps in order; then the rest
        return (0 if c.name == "matches_spec" else 1 if c.step is not None else 2, c.step or 0, index[c.name])

    return sorted(CHECKS.values(), key=order)


def get(name: str) -> Check:
    checks = {c.name: c for c in catalogue()}
    if name not in checks:
        raise KeyError(f"unknown check {name!r}; valid: {', '.join(checks)}")
    return checks[name]
