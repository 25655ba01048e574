"""Resolve backends (providers, transports) by instance, class or name.

Names resolve through a table of lazy ``"module:Class"`` strings, then the entry
point group, then a dotted ``"package.module:Class"`` path. An unknown name gets
an :class:`~tenant_notify.errors.UnknownBackendError` with a suggestion.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from .errors import MissingDependencyError, UnknownBackendError


def import_string(path: str, *, key: str | None = None, extra: str | None = None) -> Any:
    """Import ``"package.module:Name"`` (or ``"package.module.Name"``)."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except MissingDependencyError as err:
        # Raised by a built-in module that checks its own optional imports
        # (providers/_http.py): add the settings key it was asked for under.
        if err.key is None:
            err.key = key
        raise
    except ModuleNotFoundError as err:
        if extra is not None and err.name and not module_name.startswith(err.name):
            raise MissingDependencyError(err.name, extra, key=key) from err
        raise UnknownBackendError(f"cannot import {path!r}: {err}", key=key) from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise UnknownBackendError(f"{module_name!r} has no attribute {attr!r}", key=key) from err


def resolve_name(
    name: str,
    *,
    aliases: Mapping[str, str],
    extras: Mapping[str, str],
    group: str,
    kind: str,
    key: str | None = None,
) -> Any:
    """Return the class a backend name stands for.

    Args:
        name: An alias (``"smtp"``), an entry point name, or a dotted path.
        aliases: Built-in ``name -> "module:Class"`` table.
        extras: ``name -> extra`` for built-ins that need an optional dependency.
        group: Entry point group searched after the aliases.
        kind: ``"provider"`` or ``"transport"``, for messages.
        key: The settings key the name came from, for messages.
    """
    if name in aliases:
        return import_string(aliases[name], key=key, extra=extras.get(name))
    for entry in entry_points(group=group):
        if entry.name == name:
            return entry.load()
    if ":" in name or "." in name:
        return import_string(name, key=key)
    known = sorted({*aliases, *(e.name for e in entry_points(group=group))})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
    raise UnknownBackendError(f"unknown {kind} {name!r}{hint}", key=key)
