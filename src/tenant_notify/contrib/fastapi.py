"""FastAPI endpoints for tenant-notify: a router the host mounts under its API prefix.

``pip install 'tenant-notify[fastapi]'``, then::

    from fastapi import FastAPI, Header, HTTPException
    from tenant_notify.contrib.fastapi import make_router

    def current_tenant(x_tenant: str = Header()) -> str:        # the host's own auth
        return x_tenant

    def require_admin(x_role: str = Header("")) -> None:
        if x_role != "admin":
            raise HTTPException(403, "admins only")

    app = FastAPI()
    app.include_router(
        make_router(notify, admin_dependency=require_admin, tenant_dependency=current_tenant),
        prefix="/api",
    )

The router serves:

* ``POST /notifications/test/email``: admin only; sends ``{"to_email", "subject",
  "body"}`` with the caller's tenant identity and answers 202 ``{"task_id": ...}``.
* ``GET /notifications/tasks/{task_id}``: the status of one of the caller's tenant's
  notifications; 404 for an unknown id and for another tenant's id alike.
* ``POST /notifications/webhooks/{provider}/{tenant_id}`` for every provider of
  :data:`tenant_notify.webhooks.RECEIVERS` (``sendgrid``, ``twilio``, ``ses``,
  ``postmark``), and ``POST /notifications/webhooks/twilio/{tenant_id}/inbound``
  (:data:`~tenant_notify.webhooks.INBOUND_RECEIVERS`: incoming SMS, STOP and
  START): delivery events (see :mod:`tenant_notify.webhooks`), only when
  ``webhook_secrets`` is given.
* When ``[links]`` is set, the routes of the library's signed links
  (:data:`tenant_notify.reputation.ROUTES`), for recipients rather than users:
  ``GET /notifications/unsubscribe/{tenant_id}/{token}`` shows a page that asks
  (and changes nothing: link scanners fetch it), ``POST`` on the same URL
  unsubscribes (RFC 8058 one-click: 200, no redirect);
  ``GET /notifications/track/{tenant_id}/open/{token}`` answers a 1x1 GIF and
  counts an open; ``GET /notifications/track/{tenant_id}/click/{token}`` counts
  a click and redirects (302) to the link's original URL, and nowhere else. A
  token that does not verify answers 404 and records nothing.

Every endpoint is ``async def``: sends and status reads go through the notifier's
coroutine twins (``asend_email``, ``astatus``), so the event loop never waits for
the status store or the broker; webhook secrets and webhook handling, and the
signed links' reads and writes of the reputation store, run in Starlette's
thread pool.

Importing this module without FastAPI installed raises
:class:`~tenant_notify.errors.MissingDependencyError` naming the extra.
"""

import datetime as dt
import html
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_core import PydanticCustomError

from .._validation import check_text, normalize_email
from ..errors import (
    ConfigurationError,
    EnqueueError,
    InvalidLinkError,
    MissingDependencyError,
    UnknownNotificationError,
    UnknownTenantError,
    ValidationError,
    WebhookBodyTooLargeError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from ..models import Channel, DeliveryState, DeliveryStatus, Engagement
from ..notifier import Notifier
from ..reputation import ROUTES, ClickLink, OpenLink, SuppressionReason
from ..webhooks import INBOUND_RECEIVERS, RECEIVERS, DeliveryEvent, Receiver, WebhookRequest
from ..webhooks.base import MAX_BODY, aread_body

try:
    from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from starlette.concurrency import run_in_threadpool
except ModuleNotFoundError as err:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError("fastapi", "fastapi") from err

__all__ = [
    "ClickOut",
    "EngagementOut",
    "SendTestEmailRequest",
    "TaskAccepted",
    "TaskStatus",
    "WebhookProvider",
    "WebhookResult",
    "WebhookSecrets",
    "make_router",
]

_Applied = TypeVar("_Applied")

#: The providers whose delivery events the router receives (the keys of
#: :data:`tenant_notify.webhooks.RECEIVERS`).
WebhookProvider = Literal["postmark", "sendgrid", "ses", "twilio"]
#: ``(tenant_id, provider) -> secret`` of that tenant's account, or None when the
#: tenant has none (404): the SendGrid verification key, the Twilio auth token, the
#: SNS topic ARN(s) of the SES events (comma-separated), the Postmark webhook's
#: ``"user:password"``.
WebhookSecrets = Callable[[str, str], str | SecretStr | None]

# Ids in paths, no longer than check_identifier accepts.
_PathId = Annotated[str, Path(max_length=256)]


def _checked(check: Callable[..., str], value: str, field: str, **options: Any) -> str:
    try:
        return check(value, field, **options)
    except ValidationError as err:
        # A plain message in the 422 answer, instead of the exception's attributes.
        raise PydanticCustomError("value_error", "{reason}", {"reason": str(err)}) from err


# --- request and response models (they appear in the host's OpenAPI document) --------


class SendTestEmailRequest(BaseModel):
    """A test email, sent with the caller's tenant identity."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"to_email": "ops@example.com", "subject": "Test", "body": "It works."}]
        },
    )

    to_email: str = Field(description="Recipient email address.")
    subject: str = Field(description="One line; no line breaks.", max_length=998)
    body: str = Field(description="The text/plain body.")

    # The library's own checks, so the API refuses exactly what a send would.
    @field_validator("to_email")
    @classmethod
    def _check_to_email(cls, value: str) -> str:
        return _checked(normalize_email, value, "to_email")

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        return _checked(check_text, value, "subject", header=True, max_chars=998)

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: str) -> str:
        return _checked(check_text, value, "body")


class TaskAccepted(BaseModel):
    """The notification was queued; follow it with ``GET /notifications/tasks/{task_id}``."""

    task_id: str = Field(description="The notification id.")


class ClickOut(BaseModel):
    """One followed link."""

    url: str
    at: dt.datetime


class EngagementOut(BaseModel):
    """Opens and clicks of a tracked email (opens are an upper bound: mail privacy
    proxies fetch images unread)."""

    opens: int
    first_opened_at: dt.datetime | None
    last_opened_at: dt.datetime | None
    clicks: list[ClickOut] = Field(description="The first clicks, in order.")
    click_count: int = Field(description="Every click, including those not listed.")

    @classmethod
    def of(cls, engagement: Engagement | None) -> "EngagementOut | None":
        if engagement is None:
            return None
        return cls(
            opens=engagement.opens,
            first_opened_at=engagement.first_opened_at,
            last_opened_at=engagement.last_opened_at,
            clicks=[ClickOut(url=c.url, at=c.at) for c in engagement.clicks],
            click_count=engagement.click_count,
        )


class TaskStatus(BaseModel):
    """Where a notification is in its life."""

    task_id: str = Field(description="The notification id.")
    kind: str
    channel: Channel
    state: DeliveryState
    attempts: int = Field(description="Delivery attempts started so far.")
    provider: str | None = Field(description="The provider of the last attempt.")
    provider_message_id: str | None = Field(description="The provider's id once sent.")
    error: str | None = Field(description="Why the last attempt failed, if it did.")
    created_at: dt.datetime
    updated_at: dt.datetime
    engagement: EngagementOut | None = Field(
        default=None, description="Opens and clicks, for a tracked email."
    )


class WebhookResult(BaseModel):
    """What a delivery-event request changed."""

    events: int = Field(description="Events in the request.")
    applied: int = Field(description="Events that changed a notification's status.")


# --- the router ----------------------------------------------------------------------


def _validation_failed(err: ValidationError) -> HTTPException:
    # The same shape as FastAPI's own 422 answers, so clients handle one format.
    loc = ["body", err.field] if err.field else ["body"]
    return HTTPException(
        422,  # the constant's name differs between Starlette versions
        detail=[{"loc": loc, "msg": str(err), "type": "value_error"}],
    )


def make_router(
    notifier: Notifier,
    *,
    admin_dependency: Callable[..., Any],
    tenant_dependency: Callable[..., Any],
    webhook_secrets: WebhookSecrets | None = None,
    webhook_url: Callable[[Request], str] | None = None,
    tags: list[str] | None = None,
) -> APIRouter:
    """Build the notification endpoints around ``notifier``.

    Args:
        notifier: The host's Notifier.
        admin_dependency: A FastAPI dependency (any callable ``Depends`` accepts,
            with its own parameters) that lets administrators through and raises
            ``HTTPException(403)`` for anyone else (401 for nobody at all, if the
            host likes). Its return value is ignored. It guards the test email.
            It runs before the body is validated, so a non-admin learns nothing
            from a 422.
        tenant_dependency: A FastAPI dependency that returns the caller's tenant
            id (a ``str``). Sends use that tenant's identity; status reads see
            only that tenant's notifications.
        webhook_secrets: ``(tenant_id, provider) -> secret`` for the webhook
            endpoints (see :data:`WebhookSecrets`), or None (the endpoint answers
            404). Without it the webhook endpoints are not mounted. Called in a
            worker thread.
        webhook_url: ``request -> URL`` giving the public URL Twilio called, when
            a proxy makes it differ from ``str(request.url)`` (the default).
        tags: OpenAPI tags of the routes (default ``["notifications"]``).

    Returns:
        An ``APIRouter``; mount it with ``app.include_router(router, prefix=...)``.
        Do not give that call dependencies that authenticate users: the webhook
        routes are called by the providers, who prove themselves by signature.
    """
    router = APIRouter(tags=list(tags) if tags is not None else ["notifications"])

    @router.post(
        "/notifications/test/email",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=TaskAccepted,
        dependencies=[Depends(admin_dependency)],
        summary="Send a test email (admins only)",
        responses={403: {"description": "Not an administrator"}},
    )
    async def send_test_email(
        payload: SendTestEmailRequest,
        tenant_id: Annotated[str, Depends(tenant_dependency)],
    ) -> TaskAccepted:
        try:
            receipt = await notifier.asend_email(
                to_email=payload.to_email,
                subject=payload.subject,
                body=payload.body,
                tenant_id=tenant_id,
            )
        except ValidationError as err:
            raise _validation_failed(err) from err
        except UnknownTenantError as err:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown tenant") from err
        except ConfigurationError as err:
            # A tenant without email_from, a missing template: the host's to fix.
            raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from err
        except EnqueueError as err:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "the notification could not be queued"
            ) from err
        return TaskAccepted(task_id=receipt.id)

    @router.get(
        "/notifications/tasks/{task_id}",
        response_model=TaskStatus,
        summary="The status of a notification",
        responses={404: {"description": "No such notification for this tenant"}},
    )
    async def get_task_status(
        task_id: _PathId, tenant_id: Annotated[str, Depends(tenant_dependency)]
    ) -> TaskStatus:
        try:
            current = await notifier.astatus(task_id)
        except UnknownNotificationError:
            current = None
        except EnqueueError as err:  # StoreUnavailableError
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "the status store is unavailable"
            ) from err
        # Another tenant's id answers exactly like an unknown one: ids are not secret.
        if current is None or current.tenant_id != tenant_id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such notification")
        return TaskStatus(
            task_id=current.id,
            kind=current.kind,
            channel=current.channel,
            state=current.state,
            attempts=current.attempts,
            provider=current.provider,
            provider_message_id=current.provider_message_id,
            error=current.error,
            created_at=current.created_at,
            updated_at=current.updated_at,
            engagement=EngagementOut.of(current.engagement),
        )

    if webhook_secrets is not None:
        _add_webhooks(router, notifier, webhook_secrets, webhook_url)
    if notifier.reputation.links is not None:
        _add_links(router, notifier)
    return router


def _add_webhooks(
    router: APIRouter,
    notifier: Notifier,
    secrets: WebhookSecrets,
    public_url: Callable[[Request], str] | None,
) -> None:
    responses: dict[int | str, dict[str, Any]] = {
        400: {"description": "Signed, but not a payload the provider sends"},
        403: {"description": "Not provably from the provider"},
        404: {"description": "No webhook secret for this tenant"},
        413: {"description": f"The body is over {MAX_BODY:,} bytes (refused while reading it)"},
    }

    async def body_of(request: Request, provider: str) -> bytes:
        # Refused on its announced length, else while reading: never more than
        # MAX_BODY in memory, before anything parses or verifies it.
        try:
            length = int(request.headers.get("content-length", "0"))
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "invalid Content-Length") from None
        try:
            if length > MAX_BODY:
                raise WebhookBodyTooLargeError(
                    f"the webhook body is over the {MAX_BODY:,}-byte limit", provider=provider
                )
            return await aread_body(request.stream(), provider=provider)
        except WebhookBodyTooLargeError as err:
            raise HTTPException(413, err.message) from None

    async def secret_for(tenant_id: str, provider: str) -> str | SecretStr:
        secret = await run_in_threadpool(secrets, tenant_id, provider)
        if secret is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such webhook")
        return secret

    async def verified(apply: Callable[..., _Applied], *args: Any, **kwargs: Any) -> _Applied:
        # Off the event loop (it reads and writes the status store); refusals as HTTP errors.
        try:
            return await run_in_threadpool(apply, *args, **kwargs)
        except WebhookVerificationError as err:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid signature") from err
        except WebhookBodyTooLargeError as err:
            raise HTTPException(413, err.message) from err
        except WebhookPayloadError as err:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, err.message) from err

    def route(provider: str, receive: Receiver, suffix: str = "") -> None:
        async def receive_events(tenant_id: _PathId, request: Request) -> WebhookResult:
            secret = await secret_for(tenant_id, provider)
            plain = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            webhook = WebhookRequest(
                # The raw bytes: signatures cover them exactly.
                body=await body_of(request, provider),
                headers=request.headers,
                url=public_url(request) if public_url is not None else str(request.url),
            )
            events: list[DeliveryEvent] = await verified(
                receive, notifier, webhook, plain, tenant_id=tenant_id
            )
            return WebhookResult(events=len(events), applied=sum(e.applied for e in events))

        router.add_api_route(
            f"/notifications/webhooks/{provider}/{{tenant_id}}{suffix}",
            receive_events,
            methods=["POST"],
            response_model=WebhookResult,
            summary=f"{provider} {'incoming messages' if suffix else 'delivery events'}",
            responses=responses,
            name=f"{provider}_{'inbound' if suffix else 'webhook'}",
        )

    for provider, receive in RECEIVERS.items():
        route(provider, receive)
    for provider, receive in INBOUND_RECEIVERS.items():
        route(provider, receive, "/inbound")


# --- the library's signed links ------------------------------------------------------

#: A transparent 1x1 GIF.
PIXEL = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
_NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem">
<h1 style="font-size:1.4rem">{title}</h1><p>{text}</p>{form}</body></html>"""


def _page(title: str, text: str, form: str = "") -> str:
    return _PAGE.format(title=html.escape(title), text=text, form=form)


def _add_links(router: APIRouter, notifier: Notifier) -> None:
    links = notifier.reputation.links
    assert links is not None
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"description": "The link does not verify (nothing was recorded)"}
    }

    def tenant_name(tenant_id: str) -> str:
        try:
            return notifier.tenants.get(tenant_id).name
        except UnknownTenantError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such link") from None

    def lifecycle_status(link: OpenLink | ClickLink) -> DeliveryStatus | None:
        # Read only when someone takes lifecycle events of opens and clicks.
        if not notifier.reputation.observes_engagement:
            return None
        return notifier.status_store.get(link.notification_id)

    def verified(read: Callable[[str, str], _Applied], tenant_id: str, token: str) -> _Applied:
        try:
            return read(tenant_id, token)
        except InvalidLinkError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such link") from None

    @router.get(
        ROUTES["unsubscribe"],
        response_class=HTMLResponse,
        summary="Unsubscribe page (asks; changes nothing)",
        responses=not_found,
    )
    def unsubscribe_page(tenant_id: _PathId, token: str) -> HTMLResponse:
        # Link scanners and mail previews fetch GETs: only a POST unsubscribes.
        link = verified(links.read_unsubscribe, tenant_id, token)
        name = html.escape(tenant_name(tenant_id))
        form = (
            '<form method="post"><button type="submit" style="font-size:1rem;padding:.5rem 1rem">'
            "Unsubscribe</button></form>"
        )
        text = f"Stop {html.escape(link.category)} emails from {name} to this address?"
        return HTMLResponse(_page("Unsubscribe", text, form), headers=_NO_STORE)

    @router.post(
        ROUTES["unsubscribe"],
        response_class=HTMLResponse,
        summary="One-click unsubscribe (RFC 8058)",
        responses=not_found,
    )
    def unsubscribe(tenant_id: _PathId, token: str) -> HTMLResponse:
        link = verified(links.read_unsubscribe, tenant_id, token)
        name = html.escape(tenant_name(tenant_id))
        notifier.suppressions.add(
            tenant_id,
            link.recipient,
            reason=SuppressionReason.UNSUBSCRIBE,
            category=link.category,
            source="list-unsubscribe",
        )
        # 200 and no redirect: RFC 8058 senders must not redirect the POST.
        text = f"You will get no more {html.escape(link.category)} emails from {name}."
        return HTMLResponse(_page("Unsubscribed", text), headers=_NO_STORE)

    @router.get(
        ROUTES["open"],
        response_class=Response,
        summary="Open pixel of a tracked email",
        responses=not_found,
    )
    def tracked_open(tenant_id: _PathId, token: str) -> Response:
        link = verified(links.read_open, tenant_id, token)
        status = notifier.status_store.get(link.notification_id)  # for lifecycle events
        notifier.reputation.record_open(tenant_id, link.notification_id, link.kind, status=status)
        return Response(PIXEL, media_type="image/gif", headers=_NO_STORE)

    @router.get(
        ROUTES["click"],
        response_class=RedirectResponse,
        status_code=status.HTTP_302_FOUND,
        summary="Click redirect of a tracked link",
        responses=not_found,
    )
    def tracked_click(tenant_id: _PathId, token: str) -> RedirectResponse:
        link = verified(links.read_click, tenant_id, token)
        notifier.reputation.record_click(
            tenant_id, link.notification_id, link.kind, link.url, status=lifecycle_status(link)
        )
        # Only to the URL the token signs: the router is no open redirect.
        return RedirectResponse(link.url, status_code=status.HTTP_302_FOUND, headers=_NO_STORE)
