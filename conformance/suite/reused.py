"""Strategies built once per arguments and reused: drawing is what costs, not building.

A composite strategy that draws `configs(caps)` or `cases(caps, dtype)` builds a new strategy
object on every example; Hypothesis validates each new object and computes its emptiness and
reusability from scratch (measured over a default run: 10% of the workers' time in checks went
to `SearchStrategy.validate` and `recursive_property` on strategies built inside draws). A
strategy object is immutable and can be drawn from any number of times, so the factories the
draws call are wrapped in `reused`: the same arguments give the same object, already validated.

Arguments that cannot be hashed (a backend's Capabilities holding a list, an array) build a new
strategy as before; nothing is shared between arguments that merely compare equal by identity.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Strategies kept per factory: the size regime's shapes make a few hundred distinct argument
#: tuples per run; the oldest go first past this many.
KEEP = 4096


def reused(factory: F) -> F:
    """`factory` (a strategy-returning function) with its results kept by argument value."""
    kept: OrderedDict[Any, Any] = OrderedDict()

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(sorted(kwargs.items())))
        try:
            strategy = kept.get(key)
        except TypeError:  # an unhashable argument: built fresh, as without the cache
            return factory(*args, **kwargs)
        if strategy is None:
            strategy = kept[key] = factory(*args, **kwargs)
            if len(kept) > KEEP:
                kept.popitem(last=False)
        else:
            kept.move_to_end(key)
        return strategy

    return build  # type: ignore[return-value]
