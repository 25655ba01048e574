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
  ``postmark``): delivery events (see :mod:`tenant_notify.webhooks`), only when
  ``webhook_secrets`` is given.

Every endpoint is ``async def``: sends and status reads go through the notifier's
coroutine twins (``asend_email``, ``astatus``), so the event loop never waits for
the status store or the broker; webhook secrets and webhook handling run in
Starlette's thread pool.

Importing this module without FastAPI installed raises
:class:`~tenant_notify.errors.MissingDependencyError` naming the extra.
"""

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_core import PydanticCustomError

from .._validation import check_text, normalize_email
from ..errors import (
    ConfigurationError,
    EnqueueError,
    MissingDependencyError,
    UnknownNotificationError,
    UnknownTenantError,
    ValidationError,
    WebhookPayloadError,
    WebhookVerificationError,
)
from ..models import Channel, DeliveryState
from ..notifier import Notifier
from ..webhooks import RECEIVERS, DeliveryEvent, Receiver, WebhookRequest

try:
    from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
    from starlette.concurrency import run_in_threadpool
except ModuleNotFoundError as err:  # pragma: no cover - exercised without the extra
    raise MissingDependencyError("fastapi", "fastapi") from err

__all__ = [
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
        )

    if webhook_secrets is not None:
        _add_webhooks(router, notifier, webhook_secrets, webhook_url)
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
    }

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
        except WebhookPayloadError as err:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, err.message) from err

    def route(provider: str, receive: Receiver) -> None:
        async def receive_events(tenant_id: _PathId, request: Request) -> WebhookResult:
            secret = await secret_for(tenant_id, provider)
            plain = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
            webhook = WebhookRequest(
                # The raw bytes: signatures cover them exactly.
                body=await request.body(),
                headers=request.headers,
                url=public_url(request) if public_url is not None else str(request.url),
            )
            events: list[DeliveryEvent] = await verified(
                receive, notifier, webhook, plain, tenant_id=tenant_id
            )
            return WebhookResult(events=len(events), applied=sum(e.applied for e in events))

        router.add_api_route(
            f"/notifications/webhooks/{provider}/{{tenant_id}}",
            receive_events,
            methods=["POST"],
            response_model=WebhookResult,
            summary=f"{provider} delivery events",
            responses=responses,
            name=f"{provider}_webhook",
        )

    for provider, receive in RECEIVERS.items():
        route(provider, receive)
