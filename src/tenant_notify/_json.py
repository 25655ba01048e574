"""Compact JSON for what the library writes per send (task bodies, statuses).

``compact(obj)`` is ``json.dumps(obj, separators=(",", ":"))``, the same text, without
building a ``JSONEncoder`` and its C encoder on every call (a few microseconds of
a send each time): the C encoder is made once. Without circular-reference
checks: what is encoded here is built by the library (``to_dict()`` output), so it
never refers to itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["compact"]


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
