"""The library's own open and click tracking, for providers that have none (SMTP).

:func:`track_html` rewrites the HTML part of an email: every ``<a href>`` to an
``http(s)`` URL points at the router's click redirect instead (which counts the
click and answers 302 to the original URL, and only to it), and a 1x1 pixel from
the router's open endpoint goes before ``</body>``. Left alone: the text part
(never touched), ``mailto:``, ``tel:`` and every other non-HTTP link, relative
links and anchors, the library's own unsubscribe links, and any link marked
``data-tn-notrack`` (the attribute is removed from what is sent)::

    <a href="https://shop.example/reset?t=..." data-tn-notrack>Reset your password</a>

The HTML is read with the standard library's parser, so links in comments or
scripts are not rewritten and attribute values are unescaped before they are
signed (``&amp;`` in an href is one ``&`` in the URL followed).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from html.parser import HTMLParser

__all__ = ["NOTRACK_ATTRIBUTE", "track_html"]

#: Put this attribute on an ``<a>`` to keep its link as it is.
NOTRACK_ATTRIBUTE = "data-tn-notrack"


class _Links(HTMLParser):
    """Finds the start tags of links and the last ``</body>``, by position."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        # (line, column, tag text, attributes)
        self.links: list[tuple[int, int, str, list[tuple[str, str | None]]]] = []
        self.body_end: tuple[int, int] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            text = self.get_starttag_text()
            if text is not None:
                line, column = self.getpos()
                self.links.append((line, column, text, attrs))

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self.getpos()


def _offsets(text: str) -> list[int]:
    """Where each line of ``text`` starts (index 0 is line 1), as the parser counts lines."""
    starts = [0]
    for index, char in enumerate(text):
        if char == "\n":
            starts.append(index + 1)
    return starts


def _start_tag(attrs: list[tuple[str, str | None]]) -> str:
    parts = ["<a"]
    for name, value in attrs:
        parts.append(f" {name}" if value is None else f' {name}="{html.escape(value)}"')
    return "".join(parts) + ">"


def track_html(
    document: str,
    *,
    click_url: Callable[[str], str] | None,
    open_url: str | None,
    keep: Callable[[str], bool] = lambda url: False,
) -> str:
    """``document`` with its links sent through ``click_url`` and an open pixel added.

    Args:
        document: The rendered HTML part.
        click_url: Turns an original URL into its tracked one; None tracks no clicks.
        open_url: The pixel's URL; None adds no pixel.
        keep: URLs to leave alone besides the rules above (the library's own
            unsubscribe links).

    Returns:
        The rewritten HTML (unchanged when there is nothing to do).
    """
    parser = _Links()
    parser.feed(document)
    parser.close()
    starts = _offsets(document)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    for line, column, text, attrs in parser.links:
        start = starts[line - 1] + column
        names = {name for name, _ in attrs}
        href = next((value for name, value in attrs if name == "href"), None)
        if NOTRACK_ATTRIBUTE in names:
            kept = [(n, v) for n, v in attrs if n != NOTRACK_ATTRIBUTE]
            edits.append((start, start + len(text), _start_tag(kept)))
            continue
        if click_url is None or href is None:
            continue
        url = href.strip()
        if not url.lower().startswith(("http://", "https://")) or keep(url):
            continue
        rewritten = [(n, click_url(url) if n == "href" else v) for n, v in attrs]
        edits.append((start, start + len(text), _start_tag(rewritten)))
    if open_url is not None:
        pixel = (
            f'<img src="{html.escape(open_url)}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0">'
        )
        if parser.body_end is not None:
            line, column = parser.body_end
            at = starts[line - 1] + column
            edits.append((at, at, pixel))
        else:
            edits.append((len(document), len(document), pixel))
    if not edits:
        return document
    out = []
    position = 0
    for start, end, replacement in sorted(edits):
        out.append(document[position:start])
        out.append(replacement)
        position = end
    out.append(document[position:])
    return "".join(out)
