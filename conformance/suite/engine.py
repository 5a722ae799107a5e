"""Running one check on one backend at one dtype, with Hypothesis, to a `Result`.

Used by the pytest suite (`conformance/plugin/test_conformance.py`), by `nox -s mutants` and by
`python -m conformance.repro`, so all three judge a backend the same way.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from hypothesis import errors as hyp_errors
from hypothesis import example, given, settings
from hypothesis import seed as hyp_seed

from conformance import text
from conformance.suite.case import Case
from conformance.suite.database import for_combination
from conformance.suite.checks import Check, CheckFailure
from conformance.suite.process_state import restored_state
from conformance.suite.profiles import EXAMPLE_TIMEOUT_S
from conformance.suite.timeshare import spent
from conformance.suite.calls import Runner
from conformance.suite.judgement import Judgement, declared, judged_under
from conformance.suite.watchdog import IDLE_FACTOR, BackendHang, time_limit


@dataclass
class Result:
    outcome: str  # passed | failed | unsupported (skipped is decided before a check runs: plugin)
    reason: str = ""
    max_error: float | None = None
    tolerance: float | None = None
    case: Case | None = None  # the (shrunk) failing example
    examples: int = 0
    duration_s: float = 0.0
    grouped: int = 0  # of the examples, those with fewer K/V heads than query heads
    layouts: dict[str, str] | None = None  # "role layout" -> "exercised" or "not exercised: why" (layout check)

    @property
    def counterexample(self) -> str | None:
        return None if self.case is None else self.case.describe()


def _first_line(e: BaseException) -> str:
    return text.first_line(e)  # str(e) may raise or hold a lone surrogate: it is backend text


def _escaped(e: BaseException) -> str:
    """The reason for a BaseException (KeyboardInterrupt, SystemExit, ...) raised inside a check.

    The suite's workers ignore the user's Ctrl-C (the controller owns it), so there such an
    exception can only come from the code under test: it fails this check and the run goes on.
    Where Ctrl-C does raise KeyboardInterrupt in this process (repro, an in-process mutants
    run), a KeyboardInterrupt is passed on only if the user's Ctrl-C arrived (`_ctrl_c_noted`);
    one the backend raised itself is its failure.
    """
    if isinstance(e, KeyboardInterrupt) and _USER["ctrl_c"]:
        raise e
    return (f"raised {_first_line(e)} (a BaseException, not an Exception: the backend tried to "
            f"stop the process; the run went on)")


_USER = {"ctrl_c": False}  # set by _ctrl_c_noted's handler: the user pressed Ctrl-C


@contextmanager
def _ctrl_c_noted() -> Iterator[None]:
    """Where Ctrl-C raises KeyboardInterrupt here, note that it arrived (so a KeyboardInterrupt
    raised by the backend itself is told apart from the user's)."""
    _USER["ctrl_c"] = False
    if (signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def on_int(signum: int, frame: Any) -> None:
        _USER["ctrl_c"] = True
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, on_int)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_once(check: Check, backend: Any, case: Case, judgement: Judgement | None = None,
             limit_s: float | None = None) -> Result:
    """Run the check on one given case (no Hypothesis): what repro commands and the diagnosis do.

    `judgement`: the reading of the spec to judge under (default: the backend's declared conventions).
    """
    t0 = time.perf_counter()
    judgement = declared(backend) if judgement is None else judgement
    limit = EXAMPLE_TIMEOUT_S["first"] if limit_s is None else limit_s
    try:
        with _ctrl_c_noted(), restored_state(), judged_under(judgement), time_limit(
                limit, f"{check.name} on {text.name(backend.name)}", idle=IDLE_FACTOR * EXAMPLE_TIMEOUT_S["later"]):
            check.fn(Runner(backend, case.dtype), case)
    except CheckFailure as e:
        return Result("failed", str(e), e.max_error, e.tolerance, case, 1, time.perf_counter() - t0)
    except BackendHang as e:
        return Result("failed", f"hang: {e}", case=case, examples=1, duration_s=time.perf_counter() - t0)
    except Exception as e:  # an error in the check itself, not in the backend (Runner wraps those)
        return Result("failed", f"suite error (please report): {_first_line(e)}", case=case, examples=1,
                      duration_s=time.perf_counter() - t0)
    except BaseException as e:
        return Result("failed", _escaped(e), case=case, examples=1, duration_s=time.perf_counter() - t0)
    return Result("passed", "", examples=1, duration_s=time.perf_counter() - t0)


def run_check(check: Check, backend: Any, dtype: str, seed: int | None = None,
              timeouts: dict[str, float] | None = None) -> Result:
    """Hypothesis-driven run of `check`; the current settings profile decides how many examples."""
    reason = check.unsupported(backend, dtype)
    if reason:
        return Result("unsupported", reason)
    runner = Runner(backend, dtype)
    return with_layouts(_run_drawn(check, backend, dtype, seed, timeouts, runner), runner)


def with_layouts(result: Result, runner: Runner) -> Result:
    """The result with the layouts its examples laid out, each "exercised" or "not exercised: why"
    (read back from the native arrays); a pass where none reached the backend is no pass."""
    if not runner.layouts_seen:
        return result
    result.layouts = {k: "exercised" if why is None else f"not exercised: {why}"
                      for k, why in sorted(runner.layouts_seen.items())}
    if result.outcome == "passed" and all(why is not None for why in runner.layouts_seen.values()):
        first = next(iter(result.layouts.values()))
        result.outcome, result.reason = "unsupported", f"no layout reached the backend's arrays ({first})"
    return result


def _run_drawn(check: Check, backend: Any, dtype: str, seed: int | None, timeouts: dict[str, float] | None,
               runner: Runner) -> Result:
    t0 = time.perf_counter()
    limits = timeouts or EXAMPLE_TIMEOUT_S
    idle = IDLE_FACTOR * limits["later"]  # not 4x for the first example: sleeping needs no warm-up
    judgement = declared(backend)  # everything is judged against the spec adjusted for these
    state: dict[str, Any] = {"n": 0, "grouped": 0, "case": None}

    def body(case: Case) -> None:
        state["n"] += 1
        state["grouped"] += case.config.kv_heads < case.config.n_heads
        limit = limits["first"] if state["n"] == 1 else limits["later"]
        state["case"] = case  # the last case run: after a failure, the shrunk example
        # each example puts back the process state the backend changed: the spec's own
        # arithmetic and the next backend in this worker see the state the run started with
        with spent("check"), restored_state(), judged_under(judgement), time_limit(
                limit, f"{check.name} on {text.name(backend.name)} ({dtype})", idle=idle):
            check.fn(runner, case)

    for case in check.explicit_cases(backend, dtype):  # run before the drawn examples
        body = example(case)(body)
    # one example database per (check, backend, dtype), not one shared by all
    db = for_combination(check.name, backend.name, dtype)
    test = settings(database=db)(given(check.cases(backend, dtype))(body))
    if seed is not None:
        test = hyp_seed(seed)(test)
    try:
        with _ctrl_c_noted(), spent("hypothesis"):  # drawing, the engine, shrinking; the bodies are "check"
            test()
    except CheckFailure as e:
        return Result("failed", str(e), e.max_error, e.tolerance, state["case"], state["n"],
                      time.perf_counter() - t0, state["grouped"])
    except BackendHang as e:
        return Result("failed", f"hang: {e}", case=state["case"], examples=state["n"],
                      duration_s=time.perf_counter() - t0)
    except hyp_errors.Flaky as e:
        # the check failed, then passed when Hypothesis replayed the same example: the backend
        # (or something it depends on) is not deterministic; still a failure of this check
        inner = next((x for x in getattr(e, "exceptions", ()) if isinstance(x, CheckFailure)), None)
        if inner is None:
            return Result("failed", f"flaky: {_first_line(e)}", case=state["case"], examples=state["n"],
                          duration_s=time.perf_counter() - t0)
        return Result("failed", f"{inner} (flaky: passed when the same example was run again)",
                      inner.max_error, inner.tolerance, state["case"], state["n"], time.perf_counter() - t0)
    except (hyp_errors.FailedHealthCheck, hyp_errors.Unsatisfiable) as e:
        return Result("failed", f"suite error (please report): Hypothesis could not generate cases: {_first_line(e)}",
                      examples=state["n"], duration_s=time.perf_counter() - t0)
    except Exception as e:  # an error in the check itself, not in the backend (Runner wraps those)
        return Result("failed", f"suite error (please report): {_first_line(e)}", case=state["case"],
                      examples=state["n"], duration_s=time.perf_counter() - t0)
    except BaseException as e:  # KeyboardInterrupt, SystemExit, ... from the backend (not shrunk)
        return Result("failed", _escaped(e), case=state["case"], examples=state["n"],
                      duration_s=time.perf_counter() - t0)
    return Result("passed", f"{state['n']} examples", examples=state["n"], grouped=state["grouped"],
                  duration_s=time.perf_counter() - t0)
