"""What the raw libraries' probes share (libraries.py, peer_libraries.py): a distribution's version,
a bit-level comparison, and reading from a library's own signature that it lacks an argument.
Frameworks are imported inside functions only.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _differs(a: Any, b: Any) -> bool:
    return not np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def _no_kv_heads_argument(cls: type, title: str, why: str) -> str | None:
    """None when `cls`'s constructor has an argument naming K/V heads (then it can group), else the reason."""
    import inspect

    names = list(inspect.signature(cls.__init__).parameters)[1:]
    if any("kv" in n.lower() and "head" in n.lower() for n in names):
        return None
    return f"{title} has no argument for fewer K/V heads ({why}); its arguments: {', '.join(names)}"


def _no_argument(fn: Any, title: str, kind: str) -> str | None:
    """None when `fn` has an argument naming the modifier (window / softcap / sink), else the reason, read
    from its signature."""
    import inspect

    try:
        names = list(inspect.signature(fn).parameters)
    except ValueError:  # a builtin (SDPA): its docstring's first line is its signature
        import re

        head = re.search(r"\((.*?)\)", fn.__doc__ or "", re.S)
        names = [a.split("=")[0].strip(" *\n") for a in head.group(1).split(",")] if head else []
    words = {"window": ("window",), "softcap": ("softcap", "cap"), "sink": ("sink",)}[kind]
    if any(w in n.lower() for n in names for w in words):
        return None
    mask = {"window": "can carry a window", "softcap": "cannot cap scores",
            "sink": "adds to scores, not to the denominator"}[kind]
    return f"{title} has no {kind} argument (an explicit attn_mask {mask}); its arguments: {', '.join(names)}"
