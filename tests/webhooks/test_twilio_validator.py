"""Twilio signatures: accepted exactly when Twilio's own SDK accepts them.

Every pair of spellings of a callback URL (the one Twilio signed, the one the host
sees), with form parameters, repeated parameters, none, a JSON body with its
``bodySHA256``, and either algorithm, is put to ``twilio``'s ``RequestValidator``
and to :func:`verify_twilio_signature`: they must agree, both ways. ``twilio`` is
a test-only dependency; the library does not import it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from typing import Any

import pytest

from tenant_notify.errors import WebhookVerificationError
from tenant_notify.stores import MemoryStatusStore
from tenant_notify.webhooks import RECEIVERS, WebhookRequest, verify_twilio_signature
from tests.webhooks.support import sent

request_validator = pytest.importorskip("twilio.request_validator")
FormData = pytest.importorskip("starlette.datastructures").FormData

TOKEN = "twilio-auth-token-\u00e9"
SID = "SM" + "c" * 32

#: Spellings of callback URLs that differ in form only, and some that differ in substance.
URLS = [
    "https://shop.example/hooks/twilio",
    "https://shop.example:443/hooks/twilio",
    "HTTPS://shop.example/hooks/twilio",
    "https://SHOP.example/hooks/twilio",
    "https://SHOP.example:443/hooks/twilio",
    "https://shop.example/hooks/twilio?",
    "https://shop.example/hooks/twilio#",
    "https://shop.example:8443/hooks/twilio",
    "https://shop.example/hooks/twilio?tenant=acme&x=1",
    "https://shop.example:443/hooks/twilio?tenant=acme&x=1",
    "https://shop.example/hooks/twilio?x=1&tenant=acme",
    "https://shop.example/hooks/twilio;v=2",
    "https://shop.example/hooks/twilio;",
    "https://shop.example/hooks/Twilio",
    "https://shop.example/hooks/twilio/",
    "http://shop.example/hooks/twilio",
    "http://shop.example:80/hooks/twilio",
    "HTTP://shop.example:80/hooks/twilio",
    "https://user:secret@shop.example/hooks/twilio",
    "https://user:secret@shop.example:443/hooks/twilio",
    "https://[2001:db8::1]/hooks/twilio",
    "https://[2001:db8::1]:443/hooks/twilio",
    "https://shop.example:0/hooks/twilio",
    "https://shop.example:99999/hooks/twilio",
    "https://shop.example:x/hooks/twilio",
]

PARAMS: dict[str, Any] = {
    "form": {"MessageSid": SID, "MessageStatus": "delivered", "To": "+15551234567"},
    "repeated": FormData([("MessageSid", SID), ("Tag", "b"), ("Tag", "a"), ("Tag", "b")]),
    "none": {},
    "unicode": {"MessageSid": SID, "Body": "gr\u00fc\u00df dich \u2603"},
}


def validator_accepts(url: str, params: Any, signature: str, algorithm: str | None = None) -> bool:
    validator = request_validator.RequestValidator(TOKEN)
    try:
        return bool(validator.validate(url, params, signature, algorithm))
    except (ValueError, TypeError):
        return False  # the validator cannot read the URL: it accepts nothing


def we_accept(url: str, params: Any, signature: str, algorithm: str = "HMAC_SHA1") -> bool:
    try:
        verify_twilio_signature(url, params, signature, TOKEN, algorithm=algorithm)
    except WebhookVerificationError:
        return False
    return True


def signature_for(url: str, params: Any, algorithm: str | None = None) -> str:
    validator = request_validator.RequestValidator(TOKEN)
    signed: str = validator.compute_signature(url, params, algorithm)
    return signed


@pytest.mark.parametrize("params_name", list(PARAMS))
def test_every_url_spelling_is_judged_as_twilios_validator_judges_it(params_name: str) -> None:
    params = PARAMS[params_name]
    disagreements = []
    accepted = 0
    for signed_url, received_url in itertools.product(URLS, repeat=2):
        signature = signature_for(signed_url, params)
        theirs = validator_accepts(received_url, params, signature)
        ours = we_accept(received_url, params, signature)
        accepted += theirs
        if theirs != ours:
            disagreements.append((signed_url, received_url, theirs, ours))
    assert disagreements == []
    # The grid has both outcomes in numbers: it tests something both ways.
    assert len(URLS) < accepted < len(URLS) ** 2 // 2


def test_the_forms_the_review_found_refused_are_accepted() -> None:
    params = PARAMS["form"]
    signed = "https://shop.example/hooks/twilio"
    for received in (
        "HTTPS://shop.example/hooks/twilio",  # upper-case scheme
        "https://shop.example/hooks/twilio?",  # a bare ?
        "https://shop.example:443/hooks/twilio",  # the explicit port
    ):
        assert we_accept(received, params, signature_for(signed, params)), received
    # The implicit port, when Twilio signed the explicit one; an upper-case host.
    explicit = "https://SHOP.example:443/hooks/twilio"
    assert we_accept("https://SHOP.example/hooks/twilio", params, signature_for(explicit, params))


def test_tampered_parameters_token_or_signature_are_refused() -> None:
    url, params = URLS[0], PARAMS["form"]
    signature = signature_for(url, params)
    tampered = {**params, "MessageStatus": "failed"}
    for case in (
        (url, tampered, signature),
        (url, params, signature + " "),
        (url, params, signature.lower()),
        (url, params, ""),
    ):
        assert validator_accepts(*case) is False
        assert we_accept(*case) is False


@pytest.mark.parametrize("algorithm", ["HMAC_SHA1", "HMAC_SHA256", "hmac_sha256"])
def test_both_algorithms_as_the_validator_has_them(algorithm: str) -> None:
    url, params = URLS[1], PARAMS["form"]
    signature = signature_for(url, params, algorithm)
    assert validator_accepts(URLS[0], params, signature, algorithm)
    assert we_accept(URLS[0], params, signature, algorithm)
    other = "HMAC_SHA1" if algorithm.upper() == "HMAC_SHA256" else "HMAC_SHA256"
    assert not validator_accepts(URLS[0], params, signature, other)
    assert not we_accept(URLS[0], params, signature, other)
    assert not validator_accepts(URLS[0], params, signature, "HMAC_MD5")
    assert not we_accept(URLS[0], params, signature, "HMAC_MD5")


def json_case(body: str, url: str = URLS[0]) -> tuple[str, str]:
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    signed_url = f"{url}?bodySHA256={digest}"
    return signed_url, signature_for(signed_url, {})


def test_a_json_body_is_checked_against_its_body_sha256() -> None:
    body = json.dumps({"MessageSid": SID, "MessageStatus": "delivered"})
    url, signature = json_case(body)
    for received, text in [
        (url, body),
        (url.replace("https://shop.example", "https://shop.example:443"), body),
        (url, body + " "),  # the body changed: its hash no longer matches
        (url.replace("bodySHA256=", "bodySHA256=0"), body),  # the URL changed
    ]:
        assert we_accept(received, text, signature) == validator_accepts(received, text, signature)
    assert we_accept(url, body, signature)
    assert not we_accept(url, body + " ", signature)


def test_the_router_entry_reads_a_json_body_signed_with_its_hash() -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="twilio", provider_message_id=SID)
    body = json.dumps({"MessageSid": SID, "MessageStatus": "delivered", "To": "+15551234567"})
    url, signature = json_case(body)
    request = WebhookRequest(body=body.encode(), headers={"X-Twilio-Signature": signature}, url=url)
    [event] = RECEIVERS["twilio"](store, request, TOKEN)
    assert event.applied
    forged = WebhookRequest(
        body=body.replace("delivered", "failed").encode(),
        headers={"X-Twilio-Signature": signature},
        url=url,
    )
    with pytest.raises(WebhookVerificationError):
        RECEIVERS["twilio"](store, forged, TOKEN)


def test_the_router_entry_takes_the_algorithm_from_the_settings_header() -> None:
    store = MemoryStatusStore()
    sent(store, "n-1", provider="twilio", provider_message_id=SID)
    params = PARAMS["form"]
    signature = signature_for(URLS[0], params, "HMAC_SHA256")
    body = "&".join(f"{k}={v}" for k, v in params.items()).replace("+", "%2B").encode()
    headers = {
        "X-Twilio-Signature": signature,
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    }
    [event] = RECEIVERS["twilio"](
        store, WebhookRequest(body=body, headers=headers, url=URLS[0]), TOKEN
    )
    assert event.applied


def test_the_library_does_not_import_twilio() -> None:
    code = "import sys, tenant_notify.webhooks; print('twilio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
