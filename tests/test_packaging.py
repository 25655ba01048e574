"""The wheel `pip install .` builds carries what the package reads at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RENDER = """
import tenant_notify
from tenant_notify.templates import TemplateRenderer
from tenant_notify.templates._i18n import catalog_locales
print(tenant_notify.__file__)
print(",".join(catalog_locales()))
tenant = {"name": "Acme"}
for locale in ("de", "fr", "es", "nl"):
    print(TemplateRenderer().render_email("welcome", {"tenant": tenant, "user_name": "Max",
          "user_email": "max@example.com"}, locale=locale).subject)
"""


def test_the_wheel_carries_the_templates_and_the_compiled_catalogs(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("tenant_notify-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for language in ("de", "es", "fr", "nl"):
        assert f"tenant_notify/templates/locale/{language}/LC_MESSAGES/tenant_notify.mo" in names
    assert "tenant_notify/templates/builtin/order_confirmation/body.html" in names
    assert "tenant_notify/py.typed" in names

    # Installed from the wheel alone (not this checkout), it renders in every language.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", RENDER],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    where, locales, *subjects = result.stdout.splitlines()
    assert Path(where).is_relative_to(target)
    assert locales == "en,de,es,fr,nl"
    assert subjects == [
        "Willkommen bei Acme",
        "Bienvenue chez Acme",
        "Le damos la bienvenida a Acme",
        "Welkom bij Acme",
    ]
