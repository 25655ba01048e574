"""The schema registry: versioned JSON Schemas of event data, one file per version.

A folder (``[events] schemas_dir``) holds ``<type>.v<N>.json`` files, the JSON
Schema of the ``data`` of events of that type in version N::

    schemas/
      com.example.order.created.v1.json
      com.example.order.created.v2.json
      com.example.user.signed_up.v1.json

An event is validated against the version its ``dataschema`` attribute names
(the schema's ``$id``, or any URI ending in ``.v<N>.json`` or ``/v<N>``) and,
without one, against the latest version. A host generates the files from its
pydantic models with :func:`write_schema` or ``tenant-notify events schemas
generate``. Validation uses the ``jsonschema`` package (extra
``tenant-notify[events]``), with format checks on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, InvalidEventError, MissingDependencyError
from .envelope import Event

__all__ = ["EventSchema", "SchemaRegistry", "schema_from_model", "write_schema"]

_FILE = re.compile(r"^(?P<type>.+)\.v(?P<version>[1-9][0-9]*)\.json$")
_VERSION_IN_URI = re.compile(r"(?:\.v|/v)(?P<version>[1-9][0-9]*)(?:\.json)?$")
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ModuleNotFoundError as err:
        raise MissingDependencyError("jsonschema", "events", key="events.schemas_dir") from err
    return jsonschema


@dataclass(frozen=True)
class EventSchema:
    """One version of the schema of one event type.

    Attributes:
        type: The CloudEvents type.
        version: Its version number (from the file name).
        schema: The JSON Schema document.
        path: The file it was read from.
    """

    type: str
    version: int
    schema: Mapping[str, Any]
    path: Path
    _validator: Any = field(repr=False, compare=False)

    @property
    def id(self) -> str | None:
        value = self.schema.get("$id")
        return value if isinstance(value, str) else None

    def validate(self, event: Event) -> None:
        """Raise :class:`InvalidEventError` (reason ``schema``) unless ``event.data`` fits."""
        error = _jsonschema().exceptions.best_match(self._validator.iter_errors(event.data))
        if error is None:
            return
        location = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
        )
        raise InvalidEventError(
            f"fails {self.type} v{self.version}: {_describe(error)}",
            reason="schema",
            event_type=event.type,
            event_id=event.id,
            field=f"data{location}",
        )

    def property_at(self, parts: tuple[str, ...]) -> bool | None:
        """Whether the schema declares the property at ``parts`` (under ``data``).

        None when it cannot say (no ``properties`` at some level, a ``$ref``).
        """
        node: Any = self.schema
        for part in parts:
            if not isinstance(node, Mapping):
                return None
            if part.isdigit() and isinstance(node.get("items"), Mapping):
                node = node["items"]
                continue
            properties = node.get("properties")
            if not isinstance(properties, Mapping):
                return None
            if part not in properties:
                return False
            node = properties[part]
        return True


def _describe(error: Any) -> str:
    # jsonschema's messages quote the offending value; a value may be an address
    # or a name, and this text goes into logs and dead-letter headers.
    if error.validator in {"required", "additionalProperties", "dependentRequired"}:
        return str(error.message)
    return f"'{error.validator}' {json.dumps(error.validator_value, default=str)[:200]}"


class SchemaRegistry:
    """The versioned schemas of a folder, read and checked once.

    Args:
        directory: The folder of ``<type>.v<N>.json`` files.

    Raises:
        ConfigurationError: the folder is missing, a file is not JSON, or not a
            valid JSON Schema (naming the file).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConfigurationError(f"{self.directory} is not a folder", key="events.schemas_dir")
        jsonschema = _jsonschema()
        self._by_type: dict[str, dict[int, EventSchema]] = {}
        for path in sorted(self.directory.glob("*.json")):
            match = _FILE.match(path.name)
            if match is None:
                raise ConfigurationError(
                    f"{path.name} is not named <type>.v<N>.json", key="events.schemas_dir"
                )
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ConfigurationError(
                    f"{path.name} is not readable JSON: {err}", key="events.schemas_dir"
                ) from None
            if not isinstance(document, dict):
                raise ConfigurationError(
                    f"{path.name} is not a JSON Schema object", key="events.schemas_dir"
                )
            cls = jsonschema.validators.validator_for(
                document, default=jsonschema.Draft202012Validator
            )
            try:
                cls.check_schema(document)
            except jsonschema.exceptions.SchemaError as err:
                raise ConfigurationError(
                    f"{path.name} is not a valid JSON Schema: {err.message}",
                    key="events.schemas_dir",
                ) from None
            validator = cls(document, format_checker=cls.FORMAT_CHECKER)
            schema = EventSchema(match["type"], int(match["version"]), document, path, validator)
            self._by_type.setdefault(schema.type, {})[schema.version] = schema

    def __iter__(self) -> Iterator[EventSchema]:
        for event_type in sorted(self._by_type):
            versions = self._by_type[event_type]
            yield from (versions[v] for v in sorted(versions))

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._by_type

    def types(self) -> list[str]:
        return sorted(self._by_type)

    def latest(self, event_type: str) -> EventSchema | None:
        versions = self._by_type.get(event_type)
        return versions[max(versions)] if versions else None

    def schema_for(self, event: Event) -> EventSchema:
        """The schema that ``event`` is validated against.

        Raises:
            InvalidEventError: no schema for its type (reason ``schema``), or its
                ``dataschema`` names no registered version.
        """
        versions = self._by_type.get(event.type)
        if not versions:
            raise InvalidEventError(
                f"no schema for {event.type} in {self.directory.name}/",
                reason="schema",
                event_type=event.type,
                event_id=event.id,
            )
        wanted = event.dataschema
        if wanted is None:
            return versions[max(versions)]
        for schema in versions.values():
            if schema.id == wanted:
                return schema
        match = _VERSION_IN_URI.search(wanted)
        if match is not None and int(match["version"]) in versions:
            return versions[int(match["version"])]
        raise InvalidEventError(
            f"dataschema {wanted[:200]!r} names no registered version of {event.type} "
            f"(have {sorted(versions)})",
            reason="schema",
            event_type=event.type,
            event_id=event.id,
        )

    def validate(self, event: Event) -> EventSchema:
        """Validate ``event`` against its schema; return the schema used."""
        schema = self.schema_for(event)
        schema.validate(event)
        return schema

    def __repr__(self) -> str:
        return f"SchemaRegistry({str(self.directory)!r}, types={self.types()!r})"


def schema_from_model(model: Any) -> dict[str, Any]:
    """The JSON Schema of a pydantic model class, as the registry stores it."""
    document = dict(model.model_json_schema(mode="validation"))
    document = {"$schema": DRAFT, **document}
    return document


def write_schema(
    directory: str | Path,
    event_type: str,
    schema: Mapping[str, Any] | Any,
    *,
    version: int | None = None,
) -> Path:
    """Write ``schema`` (a JSON Schema or a pydantic model class) for ``event_type``.

    Without ``version``, the next version is written, unless the latest one is
    already the same document (then nothing is written and its path returned).

    Returns:
        The file's path.
    """
    if not isinstance(schema, Mapping):
        schema = schema_from_model(schema)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(
        int(m["version"])
        for p in folder.glob(f"{glob_escape(event_type)}.v*.json")
        if (m := _FILE.match(p.name)) and m["type"] == event_type
    )
    if version is None:
        if existing:
            latest = folder / f"{event_type}.v{existing[-1]}.json"
            if json.loads(latest.read_text(encoding="utf-8")) == dict(schema):
                return latest
        version = (existing[-1] + 1) if existing else 1
    path = folder / f"{event_type}.v{version}.json"
    path.write_text(json.dumps(schema, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
