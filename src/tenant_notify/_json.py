"""Compact JSON for what the library writes per send (task bodies, statuses).

``compact(obj)`` is ``json.dumps(obj, separators=(",", ":"))``, the same text, without
building a ``JSONEncoder`` and its C encoder on every call (a few microseconds of
a send each time): the C encoder is made once. Without circular-reference
checks: what is encoded here is built by the library (``to_dict()`` output), so it
never refers to itself.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

__all__ = ["compact", "isoformat", "quote"]


def _default(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make() -> Callable[[Any], str]:
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    escape = getattr(json.encoder, "c_encode_basestring_ascii", None)
    if make_encoder is None or escape is None:  # no C accelerator (PyPy, say)
        return lambda value: json.dumps(value, separators=(",", ":"))
    # markers None: no circular-reference check; key and item separators compact;
    # sort_keys False, skipkeys False, allow_nan True: json.dumps's defaults.
    encode = make_encoder(None, _default, escape, None, ":", ",", False, False, True)

    def compact(value: Any) -> str:
        return "".join(encode(value, 0))

    return compact


#: ``json.dumps(value, separators=(",", ":"))``, faster.
compact: Callable[[Any], str] = _make()

#: ``compact(text)`` for a ``str``: the JSON string literal, ASCII-escaped as the
#: encoder writes it (for text written into a JSON document by hand).
quote: Callable[[str], str] = (
    getattr(json.encoder, "c_encode_basestring_ascii", None)
    or json.encoder.py_encode_basestring_ascii
)

# The last datetime isoformat() was asked for, and its text (see isoformat).
_last_iso: tuple[dt.datetime | None, str] = (None, "")


def isoformat(value: dt.datetime) -> str:
    """``value.isoformat()``; the text of the last datetime asked is kept.

    A send writes its notification's creation time twice (in the task body and
    in its first status): the second costs a comparison. Datetimes are immutable,
    and the one kept is held, so the same object means the same text.
    """
    global _last_iso
    last = _last_iso
    if last[0] is value:
        return last[1]
    text = value.isoformat()
    _last_iso = (value, text)
    return text
