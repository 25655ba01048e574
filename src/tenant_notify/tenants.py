"""Tenants: whose identity, provider, locale and templates a notification uses.

A :class:`Tenant` is resolved on the delivery side by a :class:`TenantResolver`.
The default, :class:`StaticTenantResolver`, serves the ``[tenants.*]`` tables of
the settings; a host that keeps tenants in its database passes its own resolver
(anything with a ``get(tenant_id) -> Tenant`` method) to the Notifier.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from email.utils import getaddresses
from pathlib import Path
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from ._headers import check_header_value
from ._redact import register_secret
from ._validation import normalize_email, normalize_locale, normalize_sender_number
from .errors import UnknownTenantError
from .limiting import LimitSettings
from .models import Address

__all__ = ["CallbackTarget", "StaticTenantResolver", "Tenant", "TenantResolver"]

# Keys of provider tables whose values are secrets: kept as SecretStr from the
# moment they are read, so no repr, log or error can show them.
# "secret_access_key", "session_token", "api_key_secret" included; "api_key_sid"
# (an id) not. tests/test_config.py checks that this names every SecretStr field
# of every provider's Config, and nothing else.
_SECRET_KEY = re.compile(r"password|secret|token|private_key|api_key$")


def protect_secrets(table: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Return a copy of a provider table with secret-looking values as SecretStr.

    Nested tables are protected too: the ``fallback`` list of a channel holds
    provider tables of its own (``fallback = [{provider = "smtp", password = ...}]``).
    """
    if table is None:
        return None
    return {key: _protect_value(key, value) for key, value in table.items()}


def _protect_value(key: str, value: Any) -> Any:
    if isinstance(value, SecretStr):
        register_secret(value.get_secret_value())
        return value
    if _SECRET_KEY.search(key) and isinstance(value, str | int | float | bytes):
        # Whatever its type: "password: 12345678" in YAML is an int, and a secret.
        plain = value.decode() if isinstance(value, bytes) else str(value)
        register_secret(plain)
        return SecretStr(plain)
    if isinstance(value, Mapping):
        return protect_secrets(value)
    if isinstance(value, list | tuple):
        return [protect_secrets(item) if isinstance(item, Mapping) else item for item in value]
    return value


def _parse_address(value: Any) -> Any:
    if value is None or isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an email address, optionally with a display name")
    parsed = getaddresses([value])
    if len(parsed) != 1 or "@" not in parsed[0][1]:
        raise ValueError(f"{value!r} is not one email address")
    name, addr = parsed[0]
    check_header_value(name, "display name")
    return Address(email=normalize_email(addr, "address"), name=name)


def _parse_sender_number(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be an E.164 number or an alphanumeric sender id")
    return normalize_sender_number(value)


class CallbackTarget(BaseModel):
    """Where a tenant's lifecycle callbacks go (``[tenants.X.callbacks]``).

    Attributes:
        url: The tenant's ``http(s)://`` endpoint.
        secret: Its Standard Webhooks signing secret: ``whsec_`` and base64.
            A SecretStr: never in a repr, a log line or an error.
        states: Only these transitions; default ``[events.callbacks] states``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    secret: SecretStr
    states: tuple[str, ...] | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        register_secret(value.get_secret_value())
        text = value.get_secret_value().removeprefix("whsec_")
        try:
            key = base64.b64decode(text + "==", validate=False)
        except (binascii.Error, ValueError):
            key = b""
        if not key:
            # Not the value itself: a secret stays out of error messages.
            raise ValueError("must be whsec_ followed by a base64 key")
        return value


EmailAddressField = Annotated[Address | None, BeforeValidator(_parse_address)]


class Tenant(BaseModel):
    """One tenant's identity and overrides.

    Attributes:
        id: The tenant id the host passes to every send.
        name: Display name; also the sender's display name when ``email_from``
            is a bare address.
        email_from: Sender address (``"Acme <orders@acme.test>"`` or a bare address).
        sms_from: Sender number (E.164) or alphanumeric sender id.
        reply_to: Reply-To address, if any.
        locale: Default locale of its notifications (``"en"``, ``"de"``, ``"de-AT"``).
        templates_dir: Folder whose templates override the built-in ones.
        branding: Values templates see as ``tenant.branding`` (colours, logo URL, ...).
        email: Provider table merged over the global ``[email]`` table.
        sms: Provider table merged over the global ``[sms]`` table.
        callbacks: Where its lifecycle callbacks go, if anywhere.
        track_opens: Track opens of its emails (off by default; a kind can
            turn it off again, see ``[kinds.<kind>]``).
        track_clicks: Track clicks on the links of its emails (off by default).
        unsubscribe_mailto: An address that takes unsubscribe requests by mail,
            added to ``List-Unsubscribe`` beside the one-click URL, if any.
        weight: Its share of the workers while several tenants have a backlog,
            relative to the others' (default 1; 2 gets twice the deliveries of a
            tenant of weight 1). See docs/workers.md#fairness-across-tenants.
        limits: Its own rates and daily caps (``[tenants.<id>.limits]``), each key
            over the global ``[limits]`` (see :mod:`tenant_notify.limiting`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    id: str = ""
    name: str
    email_from: EmailAddressField = None
    sms_from: Annotated[str | None, BeforeValidator(_parse_sender_number)] = None
    reply_to: EmailAddressField = None
    locale: str = "en"
    templates_dir: Path | None = None
    branding: dict[str, str] = Field(default_factory=dict)
    email: dict[str, Any] | None = None
    sms: dict[str, Any] | None = None
    callbacks: CallbackTarget | None = None
    track_opens: bool = False
    track_clicks: bool = False
    unsubscribe_mailto: EmailAddressField = None
    weight: float = Field(default=1.0, gt=0, le=1000)
    limits: LimitSettings | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return check_header_value(value, "name")

    @field_validator("locale")
    @classmethod
    def _check_locale(cls, value: str) -> str:
        return normalize_locale(value, "locale")

    @field_validator("email", "sms", mode="before")
    @classmethod
    def _protect(cls, value: Any) -> Any:
        return protect_secrets(value) if isinstance(value, Mapping) else value

    @property
    def sender(self) -> Address | None:
        """The From address, with the tenant's name when the setting had none."""
        if self.email_from is None:
            return None
        if self.email_from.name:
            return self.email_from
        return Address(email=self.email_from.email, name=self.name)

    def template_view(self) -> dict[str, Any]:
        """What templates see as ``tenant``: no provider settings, no secrets."""
        return {
            "id": self.id,
            "name": self.name,
            "locale": self.locale,
            "branding": dict(self.branding),
        }


@runtime_checkable
class TenantResolver(Protocol):
    """Finds a tenant by id. Called on every send and every delivery: keep it fast
    (cache what comes from a database)."""

    def get(self, tenant_id: str) -> Tenant:
        """Return the tenant, or raise :class:`~tenant_notify.errors.UnknownTenantError`."""
        ...


class StaticTenantResolver:
    """Serves a fixed set of tenants, such as the ``[tenants.*]`` settings tables."""

    def __init__(self, tenants: Mapping[str, Tenant]) -> None:
        self._tenants = dict(tenants)

    def get(self, tenant_id: str) -> Tenant:
        try:
            return self._tenants[tenant_id]
        except (KeyError, TypeError):
            raise UnknownTenantError(
                f"unknown tenant {tenant_id!r}", tenant_id=str(tenant_id)
            ) from None

    def __iter__(self) -> Any:
        return iter(self._tenants.values())

    def __len__(self) -> int:
        return len(self._tenants)

    def __repr__(self) -> str:
        return f"StaticTenantResolver({sorted(self._tenants)!r})"
