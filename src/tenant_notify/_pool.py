"""Provider instances, one per distinct configuration, shared across tenants.

Tenants that resolve to the same provider settings share one instance (and so
its pooled connections); a tenant with its own credentials gets its own.

A channel's table may name fallback providers, tried in order by the dispatcher
when the one before has certainly not accepted the message::

    [email]
    provider = "sendgrid"
    api_key = "SG...."
    fallback = [{ provider = "smtp", host = "relay.internal", port = 587 }]

Each fallback entry is a provider table of its own (nothing is merged into it),
or, in a tenant's table, the string ``"default"``: the global table of the
channel (without its own fallbacks), so a tenant with its own account can fall
back to the platform's provider without repeating its settings.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Hashable, Mapping
from typing import Any

import pydantic
from pydantic import SecretStr

from ._registry import resolve_name
from .config import Settings, validation_error
from .errors import ConfigurationError, NotifyError, UnsupportedChannelError, ValidationError
from .limiting import Account, check_max_rate
from .models import Channel, EmailOptions, Feature
from .providers import PROVIDER_ALIASES, PROVIDER_EXTRAS
from .providers.base import Provider, ProviderConfig
from .tenants import Tenant

ENTRY_POINT_GROUP = "tenant_notify.providers"


def merge_tables(default: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """A tenant's provider table over the global one.

    Same provider (or none named): the tenant's keys win over the global ones. A
    different provider: the tenant's table stands alone, since the global keys
    (an SMTP host, say) mean nothing to it.
    """
    if not override:
        return dict(default)
    if "provider" in override and override["provider"] != default.get("provider"):
        return dict(override)
    return {**default, **override}


def _freeze(value: Any) -> Hashable:
    # SecretStr hashes and compares by its secret, so two tenants whose tables
    # differ only in a password never share an instance.
    if isinstance(value, Mapping):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value  # type: ignore[no-any-return]


def _account_key(factory: type[Provider], config: ProviderConfig) -> str:
    """The same for the same settings in every process; a digest, so no secret shows."""
    digest = hashlib.sha256(f"{factory.__module__}.{factory.__qualname__}".encode())
    for name, value in sorted(dict(config).items()):
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        digest.update(f"\0{name}={value!r}".encode())
    return f"{factory.name}:{digest.hexdigest()[:16]}"


FALLBACK_KEY = "fallback"
#: The pacing of a provider table (``max_rate = "14/second"``), for every provider.
MAX_RATE_KEY = "max_rate"
_POOL_KEYS = (FALLBACK_KEY, MAX_RATE_KEY)
#: A fallback entry of a tenant's table that stands for the channel's global table.
DEFAULT_FALLBACK = "default"


class _Spec:
    """A validated provider table: what to build, its cache key, its fallbacks."""

    __slots__ = (
        "account",
        "cache_key",
        "config",
        "factory",
        "fallbacks",
        "instance",
        "key",
        "name",
    )

    def __init__(
        self,
        name: str,
        cache_key: Hashable,
        *,
        key: str,
        factory: type[Provider] | None = None,
        config: ProviderConfig | None = None,
        instance: Provider | None = None,
        account: Account | None = None,
    ) -> None:
        self.name = name
        self.account = account or Account(f"{name}:{id(self):x}", name)
        self.cache_key = cache_key
        self.key = key  # the dotted settings key of the table
        self.factory = factory
        self.config = config
        self.instance = instance
        self.fallbacks: tuple[_Spec, ...] = ()

    @property
    def chain(self) -> tuple[_Spec, ...]:
        return (self, *self.fallbacks)

    @property
    def provider_class(self) -> type[Provider]:
        if self.instance is not None:
            return type(self.instance)
        assert self.factory is not None
        return self.factory


class ProviderPool:
    """Builds and caches providers from provider tables.

    Args:
        defaults: The global table per channel (``settings.email``, ``settings.sms``).
    """

    def __init__(self, defaults: Mapping[Channel, Mapping[str, Any]]) -> None:
        self._defaults = dict(defaults)
        self._specs: dict[tuple[str, Channel, Hashable], _Spec] = {}
        # (tenant id, channel) -> (the Tenant object, its spec); one entry per tenant.
        self._by_tenant: dict[tuple[str, Channel], tuple[Tenant, _Spec]] = {}
        self._instances: dict[Hashable, Provider] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderPool:
        """The pool of the settings' global ``[email]`` and ``[sms]`` tables."""
        return cls({Channel.EMAIL: settings.email, Channel.SMS: settings.sms})

    def check(self, tenant: Tenant | None = None) -> None:
        """Validate the tables (a tenant's, or the defaults) for both channels.

        Raises:
            ConfigurationError: naming the key at fault.
        """
        for channel in Channel:
            self._spec(tenant, channel)

    def provider_name(self, tenant: Tenant | None, channel: Channel) -> str:
        return self._spec(tenant, channel).name

    def provider_config(self, tenant: Tenant | None, channel: Channel) -> ProviderConfig | None:
        """The validated settings of the channel's own provider for ``tenant`` (None for a
        provider given as an instance)."""
        return self._spec(tenant, channel).config

    def tracking(self, tenant: Tenant | None, channel: Channel) -> frozenset[Feature]:
        """The tracking the channel's own provider does itself for ``tenant``
        (:meth:`Provider.tracks <tenant_notify.providers.Provider.tracks>`)."""
        spec = self._spec(tenant, channel)
        config = spec.config if spec.instance is None else getattr(spec.instance, "config", None)
        return spec.provider_class.tracks(config if isinstance(config, ProviderConfig) else None)

    def provider_names(self, tenant: Tenant | None, channel: Channel) -> tuple[str, ...]:
        """The names of the providers serving ``tenant`` (None: the global tables) on
        ``channel``, in the order they are tried: the channel's provider, then its
        fallbacks."""
        return tuple(spec.name for spec in self._spec(tenant, channel).chain)

    def check_options(self, tenant: Tenant, channel: Channel, options: EmailOptions | None) -> None:
        """Refuse, at the call, options the provider of ``tenant`` on ``channel`` lacks.

        Raises:
            UnsupportedFeatureError: naming the feature, the provider and the tenant.
            ValidationError: email options on an SMS.
        """
        if options is None:
            return
        if channel is not Channel.EMAIL:
            raise ValidationError(
                "cc, bcc, headers, tags, metadata and attachments are for email only",
                field="channel",
                tenant_id=tenant.id,
            )
        try:
            self._spec(tenant, channel).provider_class.check_options(options)
        except NotifyError as err:
            err.tenant_id = tenant.id
            raise

    def chain(
        self, tenant: Tenant, channel: Channel, options: EmailOptions | None = None
    ) -> tuple[tuple[int, str], ...]:
        """The providers to try for a message, in order, as ``(position, name)``
        pairs for :meth:`get`: the channel's provider, then those of its fallbacks
        that can send a message with ``options`` (failover never goes to a
        provider that would refuse it).

        Raises:
            UnsupportedFeatureError: the channel's own provider cannot send it.
        """
        specs = self._spec(tenant, channel).chain
        if options is None:
            return tuple(enumerate(spec.name for spec in specs))
        self.check_options(tenant, channel, options)
        usable = [(0, specs[0].name)]
        for position, spec in enumerate(specs[1:], start=1):
            try:
                spec.provider_class.check_options(options)
            except NotifyError:
                continue
            usable.append((position, spec.name))
        return tuple(usable)

    def account(self, tenant: Tenant | None, channel: Channel, position: int = 0) -> Account:
        """The provider account that serves ``tenant`` on ``channel`` at ``position``
        (as :meth:`get`): what pacing counts and pauses. Tenants whose tables name the
        same provider settings share one account, in every process."""
        return self._spec(tenant, channel).chain[position].account

    def get(self, tenant: Tenant | None, channel: Channel, position: int = 0) -> Provider:
        """The provider serving ``tenant`` (None: the global tables) on ``channel``.

        Args:
            position: 0 for the channel's provider, 1 for its first fallback, ...
                (see :meth:`provider_names` and :meth:`chain`). Fallbacks are built
                on first use.

        Raises:
            ConfigurationError: the provider refused its settings (an unreadable
                CA file, say), with the key qualified by the table's
                (``tenants.acme.email.ca_file``).
        """
        spec = self._spec(tenant, channel).chain[position]
        if spec.instance is not None:
            return spec.instance
        provider = self._instances.get(spec.cache_key)
        if provider is None:
            with self._lock:
                provider = self._instances.get(spec.cache_key)
                if provider is None:
                    assert spec.factory is not None
                    assert spec.config is not None
                    try:
                        provider = spec.factory.from_config(spec.config)
                    except ConfigurationError as err:
                        # A provider names its own option; the table is named here.
                        if err.key and not err.key.startswith(f"{spec.key}."):
                            err.key = f"{spec.key}.{err.key}"
                        raise
                    self._instances[spec.cache_key] = provider
        return provider

    def _spec(self, tenant: Tenant | None, channel: Channel) -> _Spec:
        # Every delivery asks twice (names, then the provider): answer from the
        # tenant it was built for while the resolver hands out the same object.
        # Tenants are frozen, so the same object has the same tables.
        if tenant is not None:
            built = self._by_tenant.get((tenant.id, channel))
            if built is not None and built[0] is tenant:
                return built[1]
        override = getattr(tenant, channel.value) if tenant is not None else None
        table = merge_tables(self._defaults[channel], override)
        # Tables are small; their frozen form is a cheap key for the validated spec.
        memo_key = (tenant.id if tenant is not None and override else "", channel, _freeze(table))
        spec = self._specs.get(memo_key)
        if spec is None:
            key = f"tenants.{tenant.id}.{channel.value}" if override and tenant else channel.value
            spec = self._specs[memo_key] = self._validate(table, channel, key)
        if tenant is not None:
            self._by_tenant[tenant.id, channel] = (tenant, spec)
        return spec

    def _validate(self, table: Mapping[str, Any], channel: Channel, key: str) -> _Spec:
        spec = self._validate_one(table, channel, key)
        fallbacks = table.get(FALLBACK_KEY)
        if fallbacks is None:
            return spec
        if isinstance(fallbacks, Mapping | str):
            fallbacks = [fallbacks]
        if not isinstance(fallbacks, list | tuple):
            raise ConfigurationError(
                "must be a list of provider tables", key=f"{key}.{FALLBACK_KEY}"
            )
        specs = []
        for index, entry in enumerate(fallbacks):
            where = f"{key}.{FALLBACK_KEY}.{index}"
            if entry == DEFAULT_FALLBACK:
                if key == channel.value:
                    raise ConfigurationError(
                        f"{DEFAULT_FALLBACK!r} names the global [{channel.value}] table, so it "
                        "only makes sense in a tenant's table",
                        key=where,
                    )
                entry = {k: v for k, v in self._defaults[channel].items() if k != FALLBACK_KEY}
                where = channel.value
            elif not isinstance(entry, Mapping) or "provider" not in entry:
                raise ConfigurationError(
                    "must be a provider table with a 'provider' key "
                    f"(or {DEFAULT_FALLBACK!r} in a tenant's table)",
                    key=where,
                )
            elif FALLBACK_KEY in entry:
                raise ConfigurationError(
                    "a fallback provider cannot have fallbacks of its own; list them all "
                    "in order in the channel's table",
                    key=f"{where}.{FALLBACK_KEY}",
                )
            specs.append(self._validate_one(entry, channel, where))
        spec.fallbacks = tuple(specs)
        return spec

    def _validate_one(self, table: Mapping[str, Any], channel: Channel, key: str) -> _Spec:
        chosen = table.get("provider")
        options = {k: v for k, v in table.items() if k not in ("provider", *_POOL_KEYS)}
        max_rate = table.get(MAX_RATE_KEY)
        if max_rate is not None:
            max_rate = check_max_rate(max_rate, f"{key}.{MAX_RATE_KEY}")
        if isinstance(chosen, Provider):
            if options:
                raise ConfigurationError(
                    "a provider instance takes no other settings",
                    key=f"{key}.{next(iter(options))}",
                )
            self._check_channel(type(chosen), channel, key)
            # An instance lives in one process: its account is this process's alone.
            account = Account(f"{chosen.name}:{id(chosen):x}", chosen.name, max_rate)
            return _Spec(
                chosen.name, ("instance", id(chosen)), key=key, instance=chosen, account=account
            )
        if isinstance(chosen, str):
            factory = resolve_name(
                chosen,
                aliases=PROVIDER_ALIASES,
                extras=PROVIDER_EXTRAS,
                group=ENTRY_POINT_GROUP,
                kind="provider",
                key=f"{key}.provider",
            )
        else:
            factory = chosen
        if not (isinstance(factory, type) and issubclass(factory, Provider)):
            raise ConfigurationError(
                f"{chosen!r} is not a Provider subclass", key=f"{key}.provider"
            )
        self._check_channel(factory, channel, key)
        try:
            config = factory.Config.model_validate(options)
        except pydantic.ValidationError as err:
            raise validation_error(err, key) from None
        cache_key = (factory, _freeze(dict(config)))
        account = Account(_account_key(factory, config), factory.name, max_rate)
        return _Spec(
            factory.name, cache_key, key=key, factory=factory, config=config, account=account
        )

    @staticmethod
    def _check_channel(factory: type[Provider], channel: Channel, key: str) -> None:
        if channel not in factory.channels:
            raise UnsupportedChannelError(
                f"provider {factory.name!r} does not send {channel.value}; it sends "
                f"{', '.join(sorted(c.value for c in factory.channels)) or 'nothing'}",
                key=f"{key}.provider",
            )

    def close(self) -> None:
        with self._lock:
            providers = list(self._instances.values())
            self._instances.clear()
        for provider in providers:
            provider.close()
