"""Rewriting the HTML part for the library's own tracking."""

from __future__ import annotations

from html.parser import HTMLParser

from tenant_notify.reputation.tracking import NOTRACK_ATTRIBUTE, track_html


def wrap(url: str) -> str:
    return "https://t.test/c?u=" + url.replace("&", "%26")


def hrefs(document: str) -> list[str | None]:
    found: list[str | None] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                found.append(dict(attrs).get("href"))

    Links().feed(document)
    return found


def test_http_links_are_rewritten_others_kept() -> None:
    document = (
        "<html><body>\n"
        '<p><a href="https://shop.test/o/1?a=1&amp;b=2" class="btn">Order</a>\n'
        "<a href='http://shop.test/plain'>plain</a>\n"
        '<a href="mailto:help@shop.test">mail</a> <a href="tel:+15551234567">call</a>\n'
        '<a href="/relative">rel</a> <a href="#top">top</a> <a name="anchor">x</a>\n'
        f'<a href="https://shop.test/reset" {NOTRACK_ATTRIBUTE}>reset</a>\n'
        '<!-- <a href="https://shop.test/commented">c</a> -->\n'
        "</p></body></html>"
    )
    out = track_html(document, click_url=wrap, open_url=None)
    assert hrefs(out) == [
        wrap("https://shop.test/o/1?a=1&b=2"),  # unescaped before it is wrapped
        wrap("http://shop.test/plain"),
        "mailto:help@shop.test",
        "tel:+15551234567",
        "/relative",
        "#top",
        None,
        "https://shop.test/reset",
    ]
    assert NOTRACK_ATTRIBUTE not in out
    assert 'class="btn"' in out
    assert "https://shop.test/commented" in out and wrap("https://shop.test/commented") not in out


def test_the_pixel_goes_before_body_end_or_at_the_end() -> None:
    out = track_html("<html><body><p>Hi</p></body></html>", click_url=None, open_url="https://t/o")
    assert out.endswith(
        '<img src="https://t/o" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0"></body></html>'
    )
    fragment = track_html("<p>Hi</p>", click_url=None, open_url="https://t/o?a=1&b=2")
    assert fragment.startswith("<p>Hi</p><img ") and "a=1&amp;b=2" in fragment


def test_nothing_asked_changes_nothing() -> None:
    document = '<p><a href="https://shop.test">x</a></p>'
    assert track_html(document, click_url=None, open_url=None) == document


def test_keep_leaves_chosen_links() -> None:
    document = '<a href="https://shop.test/u/1">unsubscribe</a><a href="https://x.test">x</a>'
    out = track_html(document, click_url=wrap, open_url=None, keep=lambda u: "/u/" in u)
    assert hrefs(out) == ["https://shop.test/u/1", wrap("https://x.test")]


def test_positions_survive_multibyte_text_and_crlf() -> None:
    document = '<p>Grüße ✓\r\n<a href="https://a.test">ä</a>\r\n<a href="https://b.test">b</a></p>'
    out = track_html(document, click_url=wrap, open_url=None)
    assert hrefs(out) == [wrap("https://a.test"), wrap("https://b.test")]
    assert "Grüße ✓" in out and ">ä</a>" in out
