"""What the Amazon providers (``ses``, ``sns``) share: settings, SigV4 signing, error codes.

Requests are signed with AWS Signature Version 4 by botocore's own signer
(``botocore.auth.SigV4Auth``), wrapped as an ``httpx.Auth`` so that each request is
signed as it goes out (the signature covers the body and the time). botocore is
AWS's reference implementation, released with every AWS change and used by every
boto3 client, and it pins nothing of httpx; the lighter alternatives measured
(``httpx-auth``: 0.4 MB, 9 ms to import, against botocore's 32 MB and 65 ms) pin
``httpx==0.28.*``, which would hold every host's httpx back. botocore is imported
when the first Amazon provider builds its client, never by ``import tenant_notify``.
``docs/providers/ses.md`` has the figures and how they were taken.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Generator, Iterable
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from ..errors import MissingDependencyError
from .http import HttpConfig

__all__ = ["THROTTLING_CODES", "AwsConfig", "SigV4Auth"]


# Fail when the notifier is built (this module is imported then), naming the extra;
# botocore itself is imported only when a client is built.
def _botocore_missing() -> bool:
    try:
        return importlib.util.find_spec("botocore") is None
    except ValueError:  # hidden in sys.modules (tests do that)
        return True


if _botocore_missing():
    raise MissingDependencyError("botocore", "aws")

#: The error codes botocore's standard retry mode treats as throttling.
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "KMSThrottling",
    }
)
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")


class AwsConfig(HttpConfig):
    """Settings every Amazon provider has.

    Attributes:
        region: The AWS region (``eu-west-1``).
        access_key_id: The access key of an IAM user or role.
        secret_access_key: Its secret.
        session_token: For temporary credentials (STS), if any.
        endpoint_url: The service endpoint; by default the region's public one
            (``https://email.<region>.amazonaws.com``). Point it at a test server
            or a VPC endpoint.
        connect_timeout, read_timeout, max_connections, verify_tls: see
            :class:`~tenant_notify.providers.http.HttpConfig`.
    """

    #: The endpoint prefix of the service (``email``, ``sns``).
    endpoint_prefix: ClassVar[str] = ""

    region: str
    access_key_id: str = Field(min_length=16, max_length=128, pattern=r"^[A-Z0-9]+$")
    secret_access_key: SecretStr
    session_token: SecretStr | None = None
    endpoint_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _endpoint(cls, data: Any) -> Any:
        # base_url (what the HTTP pipeline posts to) follows endpoint_url, the name
        # AWS's own SDKs give it, or the region's public endpoint.
        if isinstance(data, dict) and "base_url" not in data:
            data = dict(data)
            endpoint = data.get("endpoint_url")
            region = data.get("region")
            if endpoint:
                data["base_url"] = endpoint
            elif isinstance(region, str):
                data["base_url"] = f"https://{cls.endpoint_prefix}.{region}.amazonaws.com"
        return data

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str) -> str:
        if not _REGION.fullmatch(value):
            raise ValueError("must be an AWS region such as 'eu-west-1'")
        return value

    @field_validator("secret_access_key")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret or not secret.isascii() or any(c.isspace() for c in secret):
            raise ValueError("must be an AWS secret access key (ASCII, no spaces)")
        return value

    def secret_values(self) -> Iterable[str]:
        """The secrets, for scrubbing."""
        yield self.secret_access_key.get_secret_value()
        if self.session_token is not None:
            yield self.session_token.get_secret_value()


class SigV4Auth(httpx.Auth):
    """Sign each request with AWS Signature Version 4 (botocore's signer).

    Args:
        config: The provider's settings (credentials and region).
        service: The signing name (``ses``, ``sns``).
    """

    requires_request_body = True

    def __init__(self, config: AwsConfig, service: str) -> None:
        try:
            from botocore.auth import SigV4Auth as BotocoreSigner
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
        except ModuleNotFoundError as err:
            raise MissingDependencyError("botocore", "aws") from err
        token = config.session_token.get_secret_value() if config.session_token else None
        credentials = Credentials(
            config.access_key_id, config.secret_access_key.get_secret_value(), token
        )
        self._signer = BotocoreSigner(credentials, service, config.region)
        self._request = AWSRequest

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # Sign what goes out: the host, the content type and the body. The signer
        # adds X-Amz-Date (and X-Amz-Security-Token) and the Authorization header.
        signed = self._request(
            method=request.method,
            url=str(request.url),
            data=request.content,
            headers={
                "Host": request.headers["host"],
                "Content-Type": request.headers.get("content-type", ""),
            },
        )
        self._signer.add_auth(signed)
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
            value = signed.headers.get(name)
            if value is not None:
                request.headers[name] = value
        yield request

    def __repr__(self) -> str:
        return f"<SigV4Auth {self._signer._service_name} {self._signer._region_name}>"
