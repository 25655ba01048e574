"""Signed links into the host's router: one-click unsubscribe, open pixel, click redirect.

One signer and one route table serve both uses, so the URLs the library writes
into emails and the routes :func:`tenant_notify.contrib.fastapi.make_router`
answers can never drift apart::

    /notifications/unsubscribe/<tenant>/<token>    GET: a page that asks; POST: unsubscribe
    /notifications/track/<tenant>/open/<token>     GET: a 1x1 GIF, counts an open
    /notifications/track/<tenant>/click/<token>    GET: 302 to the original URL, counts a click

Each token is a payload signed by itsdangerous (HMAC-SHA256) with ``[links]
signing_keys`` and salted with its purpose and tenant: a token made for one
tenant (or for an open) does not verify as another tenant's (or as a click).
Keys rotate: the first signs, all verify. The payload is readable (base64 JSON,
compressed when that is shorter), not secret: it names the tenant, the
recipient and the category (unsubscribe) or the notification and the URL
(tracking), which the recipient knows anyway.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from itsdangerous import BadData, URLSafeSerializer

from ..config import LinkSettings
from ..errors import ConfigurationError, InvalidLinkError

__all__ = [
    "ROUTES",
    "ClickLink",
    "LinkSigner",
    "OpenLink",
    "UnsubscribeLink",
]

#: purpose -> route path (FastAPI syntax) under the router's mount point.
ROUTES: dict[str, str] = {
    "unsubscribe": "/notifications/unsubscribe/{tenant_id}/{token}",
    "open": "/notifications/track/{tenant_id}/open/{token}",
    "click": "/notifications/track/{tenant_id}/click/{token}",
}


@dataclass(frozen=True, slots=True)
class UnsubscribeLink:
    """What a one-click unsubscribe token says."""

    tenant_id: str
    recipient: str
    category: str


@dataclass(frozen=True, slots=True)
class OpenLink:
    """What an open-pixel token says."""

    tenant_id: str
    notification_id: str
    kind: str


@dataclass(frozen=True, slots=True)
class ClickLink:
    """What a click-redirect token says: ``url`` is the only place it redirects to."""

    tenant_id: str
    notification_id: str
    kind: str
    url: str


class LinkSigner:
    """Makes and reads the library's signed links.

    Args:
        settings: ``[links]`` with a ``base_url`` and at least one key.

    Raises:
        ConfigurationError: ``[links]`` is not set.
    """

    def __init__(self, settings: LinkSettings) -> None:
        if settings.base_url is None or not settings.signing_keys:
            raise ConfigurationError("needs base_url and signing_keys", key="links")
        self.base_url = settings.base_url
        # itsdangerous signs with the last key and verifies with every one.
        self._keys = [key.get_secret_value() for key in reversed(settings.signing_keys)]
        self._serializers: dict[tuple[str, str], URLSafeSerializer] = {}

    def _serializer(self, purpose: str, tenant_id: str) -> URLSafeSerializer:
        serializer = self._serializers.get((purpose, tenant_id))
        if serializer is None:
            serializer = URLSafeSerializer(
                self._keys,
                salt=f"tenant-notify.{purpose}.{tenant_id}",
                signer_kwargs={"digest_method": hashlib.sha256},
            )
            if len(self._serializers) < 4096:  # tenants come and go: stay bounded
                self._serializers[(purpose, tenant_id)] = serializer
        return serializer

    def _url(self, purpose: str, tenant_id: str, payload: Any) -> str:
        token = self._serializer(purpose, tenant_id).dumps(payload)
        path = ROUTES[purpose].format(tenant_id=quote(tenant_id, safe=""), token=token)
        return self.base_url + path

    def _read(self, purpose: str, tenant_id: str, token: str) -> Any:
        try:
            return self._serializer(purpose, tenant_id).loads(token)
        except BadData:
            raise InvalidLinkError(
                f"the {purpose} link does not verify", tenant_id=tenant_id
            ) from None

    # --- one-click unsubscribe -----------------------------------------------------

    def unsubscribe_url(self, tenant_id: str, recipient: str, category: str) -> str:
        """The RFC 8058 URL that unsubscribes ``recipient`` from ``category``."""
        return self._url("unsubscribe", tenant_id, {"r": recipient, "c": category})

    def read_unsubscribe(self, tenant_id: str, token: str) -> UnsubscribeLink:
        """Raises: InvalidLinkError: the token does not verify for ``tenant_id``."""
        data = self._read("unsubscribe", tenant_id, token)
        try:
            return UnsubscribeLink(tenant_id, str(data["r"]), str(data["c"]))
        except (KeyError, TypeError):
            raise InvalidLinkError("the unsubscribe link is incomplete") from None

    # --- tracking --------------------------------------------------------------------

    def open_url(self, tenant_id: str, notification_id: str, kind: str) -> str:
        """The URL of the open pixel of one notification."""
        return self._url("open", tenant_id, {"n": notification_id, "k": kind})

    def read_open(self, tenant_id: str, token: str) -> OpenLink:
        """Raises: InvalidLinkError: the token does not verify for ``tenant_id``."""
        data = self._read("open", tenant_id, token)
        try:
            return OpenLink(tenant_id, str(data["n"]), str(data["k"]))
        except (KeyError, TypeError):
            raise InvalidLinkError("the tracking link is incomplete") from None

    def click_url(self, tenant_id: str, notification_id: str, kind: str, url: str) -> str:
        """The redirect URL that counts a click and leads to ``url``."""
        return self._url("click", tenant_id, {"n": notification_id, "k": kind, "u": url})

    def read_click(self, tenant_id: str, token: str) -> ClickLink:
        """Raises: InvalidLinkError: the token does not verify for ``tenant_id``."""
        data = self._read("click", tenant_id, token)
        try:
            return ClickLink(tenant_id, str(data["n"]), str(data["k"]), str(data["u"]))
        except (KeyError, TypeError):
            raise InvalidLinkError("the tracking link is incomplete") from None

    def __repr__(self) -> str:
        # The keys are secrets: count them, never show them.
        return f"LinkSigner(base_url={self.base_url!r}, keys={len(self._keys)})"
