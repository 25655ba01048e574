"""Reputation state in Redis, beside the Redis status store.

Shared by web processes and Celery workers, so a bounce recorded by a webhook in
the web process stops the next delivery on any worker, and a pause tripped by
one worker holds for all. Keys (under ``[redis] key_prefix``)::

    supp:<tenant>:<channel>:<recipient>   hash: category ("*" for all) -> entry JSON
    suppidx:<tenant>:<channel>            sorted set of recipients (by time), to list
    fault:<tenant>:<channel>              sorted set of sender-fault times (the window)
    pause:<tenant>:<channel>              the pause JSON, expiring with the cool-down
    pauses                                set of "<tenant>:<channel>" with a pause
    eng:<notification id>                 hash: opens, first, last, clicks
    clicks:<notification id>              list of the first clicks (url, at)

Tenant ids and recipients are percent-encoded in keys, so no ``:`` in them can
make two keys meet. Every Redis failure is raised as
:class:`~tenant_notify.errors.StoreUnavailableError`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote

from ..config import Settings
from ..errors import StoreUnavailableError
from ..models import MAX_CLICKS, Channel, Click, Engagement
from .store import Pause, recipient_key
from .suppressions import Suppression

if TYPE_CHECKING:
    import redis

__all__ = ["RedisReputationStore"]

_T = TypeVar("_T")
_ALL = "*"  # the hash field of an entry for every category

_REMOVE = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end
return removed
"""

_FAULT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(ARGV[3] * 1000))
return redis.call('ZCARD', KEYS[1])
"""

_OPEN = """
redis.call('HINCRBY', KEYS[1], 'opens', 1)
local at = tonumber(ARGV[1])
local first = redis.call('HGET', KEYS[1], 'first')
if not first or at < tonumber(first) then redis.call('HSET', KEYS[1], 'first', ARGV[1]) end
local last = redis.call('HGET', KEYS[1], 'last')
if not last or at > tonumber(last) then redis.call('HSET', KEYS[1], 'last', ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_CLICK = """
redis.call('HINCRBY', KEYS[1], 'clicks', 1)
if redis.call('LLEN', KEYS[2]) < tonumber(ARGV[3]) then redis.call('RPUSH', KEYS[2], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""


def _part(value: str) -> str:
    return quote(value, safe="@.+-_")


def _epoch(value: dt.datetime) -> str:
    return repr(value.timestamp())


def _from_epoch(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(float(value), dt.UTC) if value else None


class RedisReputationStore:
    """Suppression lists, breaker state and engagement in Redis.

    Args:
        client: A ``redis.Redis`` with ``decode_responses=True`` (the status
            store's, see :meth:`from_settings`).
        key_prefix: Prefix of every key.
        engagement_ttl: Seconds engagement is kept after its last change (the
            status store's retention).
    """

    answers_locally = False

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "tenant_notify:",
        engagement_ttl: float = 7 * 86_400.0,
    ) -> None:
        import redis as redis_module

        self._redis = client
        self._prefix = key_prefix
        self._ttl_ms = max(1, int(engagement_ttl * 1000))
        self._errors: tuple[type[BaseException], ...] = (redis_module.RedisError,)
        self._remove = client.register_script(_REMOVE)
        self._fault = client.register_script(_FAULT)
        self._open = client.register_script(_OPEN)
        self._click = client.register_script(_CLICK)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> RedisReputationStore:
        """A store on ``client`` (the status store's), with ``[redis]``'s prefix and
        the statuses' retention for engagement."""
        return cls(
            client, key_prefix=settings.redis.key_prefix, engagement_ttl=settings.status_retention
        )

    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except self._errors as err:
            raise StoreUnavailableError(
                f"Redis did not answer: {type(err).__name__}: {err}"
            ) from err

    # --- suppressions ------------------------------------------------------------------

    def _list_key(self, tenant_id: str, channel: Channel) -> str:
        return f"{self._prefix}suppidx:{_part(tenant_id)}:{channel.value}"

    def _entry_key(self, tenant_id: str, channel: Channel, recipient: str) -> str:
        key = _part(recipient_key(channel, recipient))
        return f"{self._prefix}supp:{_part(tenant_id)}:{channel.value}:{key}"

    def add_suppression(self, entry: Suppression) -> None:
        key = self._entry_key(entry.tenant_id, entry.channel, entry.recipient)
        data = json.dumps(entry.to_dict(), separators=(",", ":"))
        member = recipient_key(entry.channel, entry.recipient)

        def add() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, entry.category or _ALL, data)
                pipe.zadd(
                    self._list_key(entry.tenant_id, entry.channel),
                    {member: entry.created_at.timestamp()},
                )
                pipe.execute()

        self._call(add)

    def remove_suppression(
        self, tenant_id: str, channel: Channel, recipient: str, category: str | None
    ) -> int:
        keys = [
            self._entry_key(tenant_id, channel, recipient),
            self._list_key(tenant_id, channel),
        ]
        args = [category or _ALL, recipient_key(channel, recipient)]
        return int(self._call(lambda: self._remove(keys=keys, args=args)))

    def get_suppressions(
        self, tenant_id: str, channel: Channel, recipient: str
    ) -> list[Suppression]:
        key = self._entry_key(tenant_id, channel, recipient)
        raw = cast("dict[str, str]", self._call(lambda: self._redis.hgetall(key)))
        return _entries(raw.values())

    def list_suppressions(self, tenant_id: str, channel: Channel) -> list[Suppression]:
        index = self._list_key(tenant_id, channel)
        members = cast("list[str]", self._call(lambda: self._redis.zrevrange(index, 0, -1)))
        entries: list[Suppression] = []
        for start in range(0, len(members), 500):

            def batch(chunk: list[str] = members[start : start + 500]) -> list[Any]:
                with self._redis.pipeline(transaction=False) as pipe:
                    for member in chunk:
                        pipe.hgetall(self._entry_key(tenant_id, channel, member))
                    return pipe.execute()

            for raw in self._call(batch):
                entries.extend(_entries(raw.values()))
        return entries

    # --- the breaker ---------------------------------------------------------------------

    def _scope(self, tenant_id: str, channel: Channel) -> str:
        return f"{_part(tenant_id)}:{channel.value}"

    def count_sender_fault(self, tenant_id: str, channel: Channel, window: float) -> int:
        keys = [f"{self._prefix}fault:{self._scope(tenant_id, channel)}"]
        args = [repr(time.time()), uuid.uuid4().hex, repr(window)]
        return int(self._call(lambda: self._fault(keys=keys, args=args)))

    def pause(self, pause: Pause) -> None:
        scope = self._scope(pause.tenant_id, pause.channel)
        ttl = max(1, int((pause.until.timestamp() - time.time()) * 1000))
        data = json.dumps(pause.to_dict(), separators=(",", ":"))

        def record() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(f"{self._prefix}pause:{scope}", data, px=ttl)
                pipe.sadd(f"{self._prefix}pauses", scope)
                pipe.delete(f"{self._prefix}fault:{scope}")
                pipe.execute()

        self._call(record)

    def resume(self, tenant_id: str, channel: Channel) -> bool:
        scope = self._scope(tenant_id, channel)

        def lift() -> list[Any]:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(f"{self._prefix}pause:{scope}")
                pipe.srem(f"{self._prefix}pauses", scope)
                pipe.delete(f"{self._prefix}fault:{scope}")
                return pipe.execute()

        return bool(self._call(lift)[0])

    def get_pause(self, tenant_id: str, channel: Channel) -> Pause | None:
        key = f"{self._prefix}pause:{self._scope(tenant_id, channel)}"
        raw = self._call(lambda: self._redis.get(key))
        return Pause.from_dict(json.loads(str(raw))) if raw else None

    def hold_reads(
        self, tenant_id: str, channel: Channel, recipient: str
    ) -> tuple[tuple[str, str], ...]:
        """The reads :meth:`hold_state` makes, as ``(command, key)``: for a claim on the
        same Redis to make in its own round trip (see :meth:`shares_redis_with`);
        :meth:`hold_from` reads their replies."""
        return (
            ("GET", f"{self._prefix}pause:{self._scope(tenant_id, channel)}"),
            ("HGETALL", self._entry_key(tenant_id, channel, recipient)),
        )

    def hold_from(self, replies: Sequence[Any]) -> tuple[Pause | None, list[Suppression]]:
        """The pause and the entries from the replies to :meth:`hold_reads`."""
        pause, entries = replies
        return (
            Pause.from_dict(json.loads(str(pause))) if pause else None,
            _entries(entries.values()),
        )

    def shares_redis_with(self, store: object) -> bool:
        """Whether ``store`` (an idempotency store) is on this store's client, so its
        claim can make :meth:`hold_reads` (a ``claim(..., reads=...)`` of its own)."""
        return getattr(store, "client", None) is self._redis and hasattr(store, "CLAIM_READS")

    def hold_state(
        self, tenant_id: str, channel: Channel, recipient: str
    ) -> tuple[Pause | None, list[Suppression]]:
        """The pause and the recipient's entries in one round trip (a pipeline): the
        delivery side asks it for every notification whose claim did not read them."""
        reads = self.hold_reads(tenant_id, channel, recipient)

        def read() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                (_, pause_key), (_, entry_key) = reads
                pipe.get(pause_key)
                pipe.hgetall(entry_key)
                return pipe.execute()

        return self.hold_from(self._call(read))

    def list_pauses(self) -> list[Pause]:
        index = f"{self._prefix}pauses"
        scopes = cast("set[str]", self._call(lambda: self._redis.smembers(index)))
        pauses = []
        for scope in sorted(scopes):
            raw = self._call(lambda s=scope: self._redis.get(f"{self._prefix}pause:{s}"))  # type: ignore[misc]
            if raw:
                pauses.append(Pause.from_dict(json.loads(str(raw))))
            else:  # expired: tidy the index
                self._call(lambda s=scope: self._redis.srem(index, s))  # type: ignore[misc]
        return pauses

    # --- engagement ----------------------------------------------------------------------

    def record_open(self, notification_id: str, at: dt.datetime) -> Engagement:
        keys = [f"{self._prefix}eng:{notification_id}"]
        self._call(lambda: self._open(keys=keys, args=[_epoch(at), self._ttl_ms]))
        engagement = self.get_engagement(notification_id)
        assert engagement is not None
        return engagement

    def record_click(self, notification_id: str, url: str, at: dt.datetime) -> Engagement:
        keys = [f"{self._prefix}eng:{notification_id}", f"{self._prefix}clicks:{notification_id}"]
        click = json.dumps({"url": url, "at": _epoch(at)}, separators=(",", ":"))
        self._call(lambda: self._click(keys=keys, args=[click, self._ttl_ms, MAX_CLICKS]))
        engagement = self.get_engagement(notification_id)
        assert engagement is not None
        return engagement

    def get_engagement(self, notification_id: str) -> Engagement | None:
        def read() -> list[Any]:
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(f"{self._prefix}eng:{notification_id}")
                pipe.lrange(f"{self._prefix}clicks:{notification_id}", 0, -1)
                return pipe.execute()

        counts, clicks = self._call(read)
        if not counts:
            return None
        return Engagement(
            opens=int(counts.get("opens") or 0),
            first_opened_at=_from_epoch(counts.get("first")),
            last_opened_at=_from_epoch(counts.get("last")),
            clicks=tuple(
                Click(url=c["url"], at=dt.datetime.fromtimestamp(float(c["at"]), dt.UTC))
                for c in map(json.loads, clicks)
            ),
            click_count=int(counts.get("clicks") or 0),
        )

    def close(self) -> None:
        """Nothing to release: the client belongs to the status store."""

    def __repr__(self) -> str:
        return f"RedisReputationStore(key_prefix={self._prefix!r})"


def _entries(values: Any) -> list[Suppression]:
    entries = [Suppression.from_dict(json.loads(raw)) for raw in values]
    entries.sort(key=lambda e: e.category is not None)
    return entries
