"""Number and text formatting shared by the report's tables (Markdown and HTML alike)."""

from __future__ import annotations

import math
from typing import Any


def sig(v: float | None, n: int = 3) -> str:
    """A number with n significant digits, without an exponent in the usual range."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    if mag >= 6 or mag < -4:
        return f"{v:.{n - 1}e}"
    return f"{v:.{max(0, n - 1 - mag)}f}"


def one_line(text: Any) -> str:
    """The first line of a docstring or message (tables hold one line)."""
    s = "" if text is None else str(text)
    for line in s.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def number(v: Any) -> float | None:
    """v as a float if it is a JSON number (not a bool), else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

