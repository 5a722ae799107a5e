"""Strategies built once per arguments and reused: drawing is what costs, not building.

A composite strategy that draws `configs(caps)` or `cases(caps, dtype)` builds a new strategy
object on every example; Hypothesis validates each new object and computes its emptiness and
reusability from scratch (measured over a default run: 10% of the workers' time in checks went
to `SearchStrategy.validate` and `recursive_property` on strategies built inside draws). A
strategy object is immutable and can be drawn from any number of times, so the factories the
draws call are wrapped in `reused`: the same arguments give the same object, already validated.

Arguments are compared by value: a dataclass, dict or list that cannot be hashed (Capabilities
holds a dict of conventions) is keyed by its contents. An argument that has no such form (an
array) builds a new strategy each time, as without the cache.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import OrderedDict
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Strategies kept per factory: the size regime's shapes make a few hundred distinct argument
#: tuples per run; the oldest go first past this many.
KEEP = 4096


def _frozen(a: Any) -> Any:
    """a, or a hashable stand-in equal exactly when the values are; TypeError if there is none."""
    try:
        hash(a)
        return a
    except TypeError:
        pass
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a), tuple(_frozen(getattr(a, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return dict, tuple(sorted(((_frozen(k), _frozen(v)) for k, v in a.items()), key=repr))
    if isinstance(a, (list, tuple)):
        return type(a), tuple(_frozen(v) for v in a)
    raise TypeError(f"no hashable form for {type(a).__name__}")


def reused(factory: F) -> F:
    """`factory` (a strategy-returning function) with its results kept by argument value."""
    kept: OrderedDict[Any, Any] = OrderedDict()

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> Any:
        try:
            key = _frozen(args), _frozen(tuple(sorted(kwargs.items())))
            strategy = kept.get(key)
        except TypeError:  # an argument with no hashable form: built fresh, as without the cache
            return factory(*args, **kwargs)
        if strategy is None:
            strategy = kept[key] = factory(*args, **kwargs)
            if len(kept) > KEEP:
                kept.popitem(last=False)
        else:
            kept.move_to_end(key)
        return strategy

    return build  # type: ignore[return-value]
