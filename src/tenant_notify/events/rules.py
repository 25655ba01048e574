"""Rules: which notifications an event type sends, with paths into the event.

``[[events.rules]]`` tables (:class:`~tenant_notify.config.EventRule`) are
compiled once into :class:`EventRules`. For one event, :meth:`EventRules.plan`
validates it against its schema, finds its rules and resolves every path, so a
problem is known before anything is queued; :meth:`EventRules.apply` then sends
each planned notification through the Notifier with an idempotency key derived
from the event's ``source`` and ``id`` and the rule. Applying the same event
again (redelivered, published twice) therefore queues nothing new: the
Notifier's own idempotency returns the first receipts.

A path is dot-separated (``data.customer.email``); a number picks a list item
(``data.items.0.name``, or ``data.items[0].name``). The root holds the event's
attributes (``id``, ``source``, ``subject``, ``tenantid``, ...) and ``data``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import EventRule, EventsSettings
from ..errors import ConfigurationError, InvalidEventError, UnmappedEventError
from ..models import Receipt
from .envelope import Event
from .schemas import SchemaRegistry

if TYPE_CHECKING:
    from ..notifier import Notifier

__all__ = ["EventRules", "PlannedSend", "idempotency_key", "parse_path", "resolve_path"]

_SEGMENT = re.compile(r"^[A-Za-z0-9_\-$]+$")


def parse_path(text: str) -> tuple[str, ...]:
    """``"data.items[0].name"`` -> ``("data", "items", "0", "name")``.

    Raises:
        ValueError: an empty segment or a character a path does not allow.
    """
    parts = tuple(re.sub(r"\[(\d+)\]", r".\1", text).split("."))
    for part in parts:
        if not _SEGMENT.match(part):
            raise ValueError(f"{text!r} is not a path such as data.customer_email")
    return parts


_MISSING = object()


def resolve_path(tree: Any, parts: Sequence[str]) -> Any:
    """The value at ``parts`` in ``tree``, or :data:`_MISSING`."""
    node = tree
    for part in parts:
        if isinstance(node, Mapping):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit():
            index = int(part)
            node = node[index] if index < len(node) else _MISSING
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def idempotency_key(event: Event, rule: EventRule) -> str:
    """The Notifier idempotency key of ``rule``'s send for ``event``.

    Derived from the event's identity (``source`` and ``id``, per the CloudEvents
    spec) and the rule's, hashed so that it is short whatever the source.
    """
    digest = hashlib.sha256(
        "\x00".join((event.source, event.id, event.type, rule.identity)).encode("utf-8")
    ).hexdigest()
    return f"event:{digest[:40]}"


@dataclass(frozen=True, slots=True)
class PlannedSend:
    """One notification an event is to send, every path resolved."""

    rule: EventRule
    tenant_id: str
    to: str
    context: dict[str, Any]
    locale: str | None
    idempotency_key: str


@dataclass(frozen=True)
class _Compiled:
    rule: EventRule
    to: tuple[str, ...]
    context: dict[str, tuple[str, ...]]
    locale: tuple[str, ...] | None
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)


class EventRules:
    """The compiled rules, and the schema registry events are checked against.

    Args:
        rules: The ``[[events.rules]]`` tables.
        registry: Schemas to validate events with; None validates nothing.

    Raises:
        ConfigurationError: a path that is not one, a rule whose type has no
            schema (when there is a registry), a path the schema does not
            declare, or two rules one event cannot tell apart.
    """

    def __init__(self, rules: Sequence[EventRule], registry: SchemaRegistry | None = None) -> None:
        self.registry = registry
        self._by_type: dict[str, list[_Compiled]] = {}
        for index, rule in enumerate(rules):
            key = f"events.rules.{index}"
            compiled = _compile(rule, key)
            if registry is not None:
                _check_against_schema(compiled, registry, key)
            siblings = self._by_type.setdefault(rule.type, [])
            if any(other.rule.identity == rule.identity for other in siblings):
                raise ConfigurationError(
                    f"two rules for {rule.type} send {rule.kind} by {rule.channel} to "
                    f"{rule.to}: give them distinct 'name's",
                    key=f"{key}.name",
                )
            siblings.append(compiled)

    @classmethod
    def from_settings(cls, settings: EventsSettings) -> EventRules:
        """Build from ``[events]``: the rules, and ``schemas_dir`` if set."""
        registry = SchemaRegistry(settings.schemas_dir) if settings.schemas_dir else None
        return cls(settings.rules, registry)

    @property
    def types(self) -> list[str]:
        """The event types some rule maps, sorted."""
        return sorted(self._by_type)

    def rules_for(self, event_type: str) -> list[EventRule]:
        return [compiled.rule for compiled in self._by_type.get(event_type, ())]

    def validate(self, event: Event) -> None:
        """Check ``event`` against its schema (when there is a registry).

        Raises:
            InvalidEventError: reason ``schema``.
        """
        if self.registry is not None:
            self.registry.validate(event)

    def plan(self, event: Event) -> list[PlannedSend]:
        """Validate ``event`` and resolve what each of its rules sends.

        Raises:
            UnmappedEventError: no rule for its type.
            InvalidEventError: it fails its schema, has no ``tenantid``, or a
                path finds nothing (or a recipient that is not text).
        """
        compiled_rules = self._by_type.get(event.type)
        if not compiled_rules:
            raise UnmappedEventError(
                f"no rule maps {event.type}",
                reason="unmapped",
                event_type=event.type,
                event_id=event.id,
            )
        self.validate(event)
        if not event.tenant_id:
            raise InvalidEventError(
                "no tenantid attribute",
                reason="invalid",
                event_type=event.type,
                event_id=event.id,
                field="tenantid",
            )
        tree = event.as_tree()
        planned = []
        for compiled in compiled_rules:
            values = {name: _lookup(tree, parts, event) for name, parts in compiled.paths.items()}
            to = values.pop("\x00to")
            if not isinstance(to, str):
                raise InvalidEventError(
                    f"{compiled.rule.to} is not text",
                    reason="path",
                    event_type=event.type,
                    event_id=event.id,
                    field=compiled.rule.to,
                )
            locale = values.pop("\x00locale", None)
            planned.append(
                PlannedSend(
                    rule=compiled.rule,
                    tenant_id=event.tenant_id,
                    to=to,
                    context=values,
                    locale=str(locale) if locale is not None else None,
                    idempotency_key=idempotency_key(event, compiled.rule),
                )
            )
        return planned

    def apply(self, notifier: Notifier, event: Event) -> list[Receipt]:
        """Send what ``event``'s rules say, through ``notifier``.

        Every rule is planned (and the tenant looked up) before the first send,
        so an event that cannot be sent in full sends nothing, except where a
        send itself is refused (a recipient the Notifier rejects).

        Returns:
            One receipt per rule (``duplicate`` for an event seen before).

        Raises:
            UnmappedEventError, InvalidEventError: see :meth:`plan`.
            UnknownTenantError: ``tenantid`` names no tenant.
            ValidationError: the Notifier refused a send's input.
            EnqueueError: the transport did not take a send (safe to apply again).
        """
        planned = self.plan(event)
        notifier.tenants.get(planned[0].tenant_id)
        return [
            notifier.send(
                send.rule.kind,
                tenant_id=send.tenant_id,
                to=send.to,
                context=send.context,
                channel=send.rule.channel,
                idempotency_key=send.idempotency_key,
                locale=send.locale,
            )
            for send in planned
        ]

    def __repr__(self) -> str:
        return f"EventRules(types={self.types!r}, registry={self.registry!r})"


def _lookup(tree: Any, parts: tuple[str, ...], event: Event) -> Any:
    value = resolve_path(tree, parts)
    if value is _MISSING:
        path = ".".join(parts)
        raise InvalidEventError(
            f"{path} is missing",
            reason="path",
            event_type=event.type,
            event_id=event.id,
            field=path,
        )
    return value


def _compile(rule: EventRule, key: str) -> _Compiled:
    def parse(text: str, where: str) -> tuple[str, ...]:
        try:
            return parse_path(text)
        except ValueError as err:
            raise ConfigurationError(str(err), key=where) from None

    to = parse(rule.to, f"{key}.to")
    context = {name: parse(text, f"{key}.context.{name}") for name, text in rule.context.items()}
    locale = parse(rule.locale, f"{key}.locale") if rule.locale else None
    # Names no template field can have, for the recipient and the locale.
    paths = {**context, "\x00to": to}
    if locale is not None:
        paths["\x00locale"] = locale
    return _Compiled(rule, to, context, locale, paths)


def _check_against_schema(compiled: _Compiled, registry: SchemaRegistry, key: str) -> None:
    rule = compiled.rule
    schema = registry.latest(rule.type)
    if schema is None:
        raise ConfigurationError(
            f"no schema for {rule.type} in {registry.directory} (events are validated "
            "against their type's schema when schemas_dir is set)",
            key=f"{key}.type",
        )
    named = {"to": compiled.to, **{f"context.{n}": p for n, p in compiled.context.items()}}
    if compiled.locale is not None:
        named["locale"] = compiled.locale
    for where, parts in named.items():
        if parts[0] != "data" or len(parts) == 1:
            continue
        if schema.property_at(parts[1:]) is False:
            raise ConfigurationError(
                f"{'.'.join(parts)} is not in the schema of {rule.type} v{schema.version}",
                key=f"{key}.{where}",
            )
