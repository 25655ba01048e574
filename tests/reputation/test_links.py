"""The link signer: itsdangerous tokens salted per purpose and tenant, keys that rotate."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tenant_notify.config import LinkSettings
from tenant_notify.errors import ConfigurationError, InvalidLinkError
from tenant_notify.reputation import ROUTES, LinkSigner

OLD_KEY = "old-key-0123456789abcdef"
NEW_KEY = "new-key-fedcba9876543210"


def signer(*keys: str) -> LinkSigner:
    return LinkSigner(
        LinkSettings(base_url="https://shop.test/api", signing_keys=keys or (NEW_KEY,))
    )


def token_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


def test_urls_follow_the_route_table() -> None:
    links = signer()
    url = links.unsubscribe_url("acme", "jane@example.com", "marketing")
    path = urlsplit(url).path
    assert url.startswith("https://shop.test/api/notifications/unsubscribe/acme/")
    assert path.removeprefix("/api") == ROUTES["unsubscribe"].format(
        tenant_id="acme", token=token_of(url)
    )
    assert "/notifications/track/acme/open/" in links.open_url("acme", "n-1", "welcome")
    assert "/notifications/track/acme/click/" in links.click_url(
        "acme", "n-1", "welcome", "https://x"
    )


def test_tokens_read_back() -> None:
    links = signer()
    unsubscribe = links.read_unsubscribe(
        "acme", token_of(links.unsubscribe_url("acme", "jane@example.com", "marketing"))
    )
    assert (unsubscribe.recipient, unsubscribe.category) == ("jane@example.com", "marketing")
    target = "https://shop.test/orders/1?utm=mail&x=%20y"
    click = links.read_click("acme", token_of(links.click_url("acme", "n-1", "news", target)))
    assert (click.notification_id, click.kind, click.url) == ("n-1", "news", target)
    opened = links.read_open("acme", token_of(links.open_url("acme", "n-1", "news")))
    assert (opened.notification_id, opened.kind) == ("n-1", "news")


def test_a_tampered_token_does_not_verify() -> None:
    links = signer()
    token = token_of(links.click_url("acme", "n-1", "news", "https://shop.test/"))
    payload, _, signature = token.rpartition(".")
    for bad in (
        payload + "." + signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB"),
        payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + signature,
        "",
        "not-a-token",
    ):
        with pytest.raises(InvalidLinkError):
            links.read_click("acme", bad)


def test_a_token_is_worth_nothing_for_another_tenant_or_purpose() -> None:
    links = signer()
    token = token_of(links.unsubscribe_url("acme", "jane@example.com", "marketing"))
    with pytest.raises(InvalidLinkError):
        links.read_unsubscribe("globex", token)
    opened = token_of(links.open_url("acme", "n-1", "news"))
    with pytest.raises(InvalidLinkError):
        links.read_click("acme", opened)


def test_keys_rotate_newest_first() -> None:
    old = signer(OLD_KEY)
    token = token_of(old.unsubscribe_url("acme", "jane@example.com", "marketing"))
    rotated = signer(NEW_KEY, OLD_KEY)
    assert rotated.read_unsubscribe("acme", token).recipient == "jane@example.com"
    new_token = token_of(rotated.unsubscribe_url("acme", "jane@example.com", "marketing"))
    assert signer(NEW_KEY).read_unsubscribe("acme", new_token).category == "marketing"
    with pytest.raises(InvalidLinkError):
        old.read_unsubscribe("acme", new_token)  # signed with the new key
    with pytest.raises(InvalidLinkError):
        signer(NEW_KEY).read_unsubscribe("acme", token)  # the old key was dropped


def test_keys_never_show() -> None:
    links = signer(NEW_KEY, OLD_KEY)
    assert NEW_KEY not in repr(links) and OLD_KEY not in repr(links)
    settings = LinkSettings(base_url="https://shop.test", signing_keys=(NEW_KEY,))
    assert NEW_KEY not in repr(settings)


@pytest.mark.parametrize(
    "table",
    [
        {"base_url": "http://shop.test/api", "signing_keys": [NEW_KEY]},  # not https
        {"base_url": "https://shop.test/api"},  # no key
        {"base_url": "https://shop.test/api", "signing_keys": ["short"]},
        {"base_url": "https://shop.test/api?x=1", "signing_keys": [NEW_KEY]},
    ],
)
def test_bad_link_settings_are_refused(table: dict[str, object]) -> None:
    from tenant_notify.config import load_settings

    with pytest.raises(ConfigurationError) as info:
        load_settings({"links": table})
    assert NEW_KEY not in str(info.value)


def test_http_is_allowed_for_localhost() -> None:
    assert LinkSettings(base_url="http://localhost:8000", signing_keys=(NEW_KEY,)).enabled
