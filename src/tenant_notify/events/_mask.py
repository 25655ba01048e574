"""Masking recipients in text that leaves the process (dead-letter headers, callbacks).

Errors may quote what they refused: an address, a number, a value of the event.
The library's one scrubbing path (:func:`tenant_notify._redact.redact`) takes out
secrets and masks every address and E.164 number (``j***@example.com``,
``+1********67``); on top of it, any string value of the event that the text
quotes is masked, since a refused recipient need not look like one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._redact import redact
from ..log import mask_recipient

__all__ = ["mask_text"]


def mask_text(text: str, event: Any = None) -> str:
    """``text`` with recipients masked; ``event`` (an Event or None) adds its data's values."""
    data = getattr(event, "data", None)
    for value in set(_strings(data)):
        if len(value) > 3 and value in text:
            text = text.replace(value, mask_recipient(value))
    return redact(text)


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
