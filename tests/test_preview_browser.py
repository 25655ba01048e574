"""The preview page in a real headless Chromium (Debian's ``chromium`` package).

Skipped where /usr/bin/chromium is missing, except under CI (the ``CI`` variable
set), where .ci/run installs it and a missing browser is a failure. Set
``TENANT_NOTIFY_UPDATE_SCREENSHOT=1`` to refresh docs/images/preview.png.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tenant_notify.preview import PreviewServer
from tests.preview_support import ACME_COLOR, running_preview

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "images" / "preview.png"
WIDTH, HEIGHT = 1280, 900

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium", pytrace=False)
    pytest.skip(
        f"{CHROMIUM} is missing (apt-get install chromium); CI installs it",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreviewServer]:
    with running_preview(tmp_path_factory.mktemp("preview")) as server:
        yield server


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium on ``url``; its stdout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [
        str(CHROMIUM),
        "--headless",
        # Tests run as root in CI containers, where Chromium's own sandbox cannot start.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # The machines have no outside network; without these Chromium keeps trying.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
        *args,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def preview_url(server: PreviewServer, **query: str) -> str:
    return server.url + "preview?" + urlencode(query)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0 and color_type in (2, 6), (depth, color_type)
    channels = 4 if color_type == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prior = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        filter_type, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prior[i]
            upper_left = prior[i - channels] if i >= channels else 0
            if filter_type == 1:
                line[i] = (line[i] + left) & 0xFF
            elif filter_type == 2:
                line[i] = (line[i] + up) & 0xFF
            elif filter_type == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif filter_type == 4:
                p = left + up - upper_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
                line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        prior = line
    return (
        width,
        height,
        [bytes(row[i : i + 3]) for row in rows for i in range(0, stride, channels)],
    )


def test_the_page_loads_and_shows_the_tenants_branding(server, tmp_path):
    url = preview_url(server, tenant="acme", kind="order_confirmation", locale="en")
    dom = chromium(tmp_path, url, "--dump-dom")
    assert "<title>Acme Shop: order_confirmation (en)</title>" in dom
    assert "Order confirmation A-1001 \u2013 Acme Shop" in dom
    assert "Acme Shop: thank you for your order A-1001 ($99.99)." in dom
    # The email document the frame shows carries the tenant's name and colour.
    frame = dom.split("<iframe", 1)[1].split("</iframe>", 1)[0]
    assert 'sandbox=""' in frame
    assert f"background-color:{ACME_COLOR}" in frame
    assert "Acme Shop" in frame


def test_a_screenshot_shows_the_email_in_the_tenants_colour(server, tmp_path):
    url = preview_url(server, tenant="acme", kind="order_confirmation", locale="en")
    shot = tmp_path / "preview.png"
    want = bytes.fromhex(ACME_COLOR[1:])
    counts = []
    # Headless Chromium takes its shot at the load event; on a loaded machine
    # that can come before the srcdoc frame has painted (the budget does not
    # always cover it), so a blank frame is shot again, a few times at most.
    for _ in range(4):
        chromium(tmp_path, url, "--virtual-time-budget=10000", f"--screenshot={shot}")
        width, height, pixels = png_pixels(shot.read_bytes())
        assert (width, height) == (WIDTH, HEIGHT)
        # The email's header band and button are painted in the tenant's primary
        # colour inside the frame: many thousands of pixels, where the page's own
        # swatch has about a hundred.
        counts.append(
            sum(1 for px in pixels if all(abs(a - b) <= 3 for a, b in zip(px, want, strict=True)))
        )
        if counts[-1] > 10_000:
            break
    assert counts[-1] > 10_000, counts
    if os.environ.get("TENANT_NOTIFY_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_tenant_html_runs_no_script_in_the_browser(server, tmp_path):
    dom = chromium(tmp_path, preview_url(server, tenant="broken", kind="hostile"), "--dump-dom")
    # The template's scripts would rewrite the page or its title if they ran.
    assert "PWNED" not in dom.split("<iframe", 1)[0]
    assert "<title>Broken Ltd: hostile (en)</title>" in dom
    assert "Hostile &lt;b&gt;subject&lt;/b&gt;" in dom
