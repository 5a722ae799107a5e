"""Text a backend wrote, made safe to leave the process that holds it: escaped and bounded.

A backend's name, an exception message or a skip reason is third-party text. A lone surrogate
in it (what `surrogateescape` makes of an undecodable byte) cannot be encoded as UTF-8:
pytest-xdist's channel, a UTF-8 terminal and the report writers all fail on it. A 20 MB
message, written into results.json, printed in the summary and repeated in pytest's report,
costs hundreds of MB. So every such text passes through `safe()` before it leaves a worker,
is printed, or is written: surrogates become `\\udcff` escapes and the text is cut to a limit
with a note of how much was cut.
"""

from __future__ import annotations

from typing import Any

#: characters kept of one message (a failure reason, a skip reason, an error)
MESSAGE_LIMIT = 2000
#: characters kept of a backend's name (it is in every summary row and every record)
NAME_LIMIT = 80
#: characters kept of any other string in a record (the output tail is 64 KiB itself)
FIELD_LIMIT = 70_000


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except Exception as e:  # a backend's __str__ may raise: its type still says something
        return f"<{type(value).__name__} whose str() raised {type(e).__name__}>"


def safe(value: Any, limit: int = MESSAGE_LIMIT) -> str:
    """`value` as text that encodes as UTF-8 (lone surrogates escaped) and has at most about
    `limit` characters (the cut is said at the end)."""
    text = _str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = f"{text[:limit]} [... {len(text) - limit} more characters cut]"
    return text


def safe_repr(value: Any, limit: int = 200) -> str:
    """repr(value), safe and bounded; a __repr__ that raises is said, not raised."""
    try:
        return safe(repr(value), limit)
    except Exception as e:
        return f"<{type(value).__name__} whose repr() raised {type(e).__name__}>"


def name(value: Any) -> str:
    """A backend's name as the run shows and records it."""
    return safe(value, NAME_LIMIT)


def first_line(e: BaseException) -> str:
    """`Type: first line of the message`, safe; a str() that raises is said, not raised."""
    text = safe(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def safe_tree(value: Any, limit: int = FIELD_LIMIT) -> Any:
    """Every string in a JSON-like value (dicts, lists) made safe; keys too."""
    if isinstance(value, str):
        return safe(value, limit)
    if isinstance(value, dict):
        return {safe(k, limit) if isinstance(k, str) else k: safe_tree(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe_tree(v, limit) for v in value]
    return value


def safe_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as a worker writes it: the reason bounded to MESSAGE_LIMIT, the rest to FIELD_LIMIT."""
    out = safe_tree(rec)
    if isinstance(out.get("reason"), str):
        out["reason"] = safe(out["reason"], MESSAGE_LIMIT)
    return out
