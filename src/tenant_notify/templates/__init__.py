"""Render notification templates in a Jinja2 sandbox, with size and time limits.

The package holds the whole of rendering: :mod:`._renderer` (this renderer),
:mod:`._loader` (names, sources, the chain loader), :mod:`._sandbox` (the
environment and its limits), :mod:`._filters` (``money``, ``css_color``),
:mod:`._locale` (locale folders) and ``builtin/`` (the built-in templates).

A *kind* (``"order_confirmation"``, ``"welcome"``, or one a host app defines) is a
folder of *parts*: ``subject.txt``, ``body.txt`` and the optional ``body.html`` for
email, ``sms.txt`` for SMS. :class:`TemplateRenderer` finds each part in a chain
of sources and renders it.

Lookup order
------------
Sources, first match wins: the tenant's ``templates_dir`` (if any), the host
application's ``app_templates_dir`` (if any), then the built-in
``builtin`` templates shipped in this package. Within each source the renderer
tries ``<locale>/<kind>/<part>``, then ``<lang>/<kind>/<part>``, then
``<kind>/<part>``; so for locale ``de-AT`` and a tenant directory the order is::

    tenant:de_AT/welcome/body.txt   tenant:de/welcome/body.txt   tenant:welcome/body.txt
    app:de_AT/welcome/body.txt      app:de/welcome/body.txt      app:welcome/body.txt
    builtin:de_AT/...               builtin:de/welcome/body.txt  builtin:welcome/body.txt

A source that has a part therefore overrides it for every locale it does not
translate. Locales may be written ``de``, ``de-AT`` or ``de_AT``; folders are named
``de`` and ``de_AT`` (language lower case, region upper case). A locale that is
not of that simple form is ignored and only ``<kind>/<part>`` is tried.

Inside a template, ``{% extends %}``, ``{% include %}`` and ``{% import %}`` names
are looked up in the same chain of sources (without the locale folders), so a
tenant's ``body.html`` may extend the built-in layout simply by
``{% extends "_layout.html" %}``. A name may also be pinned to one source with a
prefix: ``"builtin:_layout.html"``, ``"app:..."``, ``"tenant:..."``. The built-in
templates pin their layout that way, so a ``_layout.html`` of a tenant or of the
host app never changes them.

Templates see the context the caller passes plus ``locale``. Filters on top of
Jinja's own: ``money`` (``{{ total|money(currency) }}``, see :func:`format_money`),
``number``, ``date`` and ``datetime`` (Babel's formatting for the ``locale``
variable, see :mod:`tenant_notify.templates._filters`) and ``css_color``
(``{{ color|css_color('#1f2937') }}`` passes a hex colour or a colour name and
replaces anything else by the default). ``.html`` parts are
autoescaped, ``.txt`` parts are not. Undefined variables are errors
(``StrictUndefined``); use ``x|default(...)`` or ``x is defined`` for optional ones.
Blocks are trimmed (``trim_blocks`` and ``lstrip_blocks``), so a line holding only
a ``{% ... %}`` tag leaves no blank line behind.

Untrusted templates
-------------------
Tenant templates are untrusted: they run in a hardened Jinja2 sandbox with
output-size and time limits. What it defends against, and what it does not, is
described in :mod:`tenant_notify.templates._sandbox`.

Money, number and date formatting
---------------------------------
Babel's, in every locale it knows: see :func:`format_money` and
:mod:`tenant_notify.templates._filters`.
"""

from ._filters import format_money
from ._renderer import EMAIL_PARTS, SMS_PART, RenderedEmail, TemplateRenderer

__all__ = [
    "EMAIL_PARTS",
    "SMS_PART",
    "RenderedEmail",
    "TemplateRenderer",
    "format_money",
]
