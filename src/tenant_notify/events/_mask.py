"""Masking recipients in text that leaves the process (dead-letter headers, callbacks).

Errors may quote what they refused: an address, a number, a value of the event.
Until the library has one scrubbing path for every text it emits, this is the
events package's: every address and every E.164 number in the text is masked
(``j***@example.com``, ``+1********67``), and so is any string value of the
event (``values``) that the text quotes, since a refused recipient need not look
like one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..log import mask_recipient

__all__ = ["mask_text"]

# An address, or a number in E.164 form: what a reason may quote of a recipient.
_RECIPIENTISH = re.compile(r"[^\s'\"(),;<>]+@[^\s'\"(),;<>]+|\+\d{6,15}")


def mask_text(text: str, event: Any = None) -> str:
    """``text`` with recipients masked; ``event`` (an Event or None) adds its data's values."""
    data = getattr(event, "data", None)
    for value in set(_strings(data)):
        if len(value) > 3 and value in text:
            text = text.replace(value, mask_recipient(value))
    return _RECIPIENTISH.sub(lambda m: mask_recipient(m.group(0)), text)


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
