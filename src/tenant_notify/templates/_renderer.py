"""The renderer: finds each part of a kind in the chain of sources and renders it.

See the package docstring (:mod:`tenant_notify.templates`) for the lookup order
and what templates see.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast, overload

import jinja2
from jinja2.exceptions import SecurityError

from .._headers import check_header_value
from ..errors import (
    ConfigurationError,
    TemplateError,
    TemplateLimitError,
    TemplateNotFoundError,
    TemplateRenderError,
    TemplateSecurityError,
)
from ..models import Channel
from ._cache import CacheStats, LRUCache
from ._limits import BUDGET, UNLIMITED, WORK_FACTOR, Budget, LimitExceeded
from ._loader import (
    APP,
    BUILTIN,
    BUILTIN_DIR,
    CURRENT_CHAIN,
    LABELS,
    TENANT,
    Chain,
    ChainLoader,
    check_apart,
    display_name,
    find,
    is_safe_name,
    make_source,
)
from ._locale import babel_locale, locale_folders
from ._sandbox import SandboxEnvironment, autoescape
from ._trusted import BuiltinEnvironments, is_builtin_name

__all__ = ["EMAIL_PARTS", "SMS_PART", "RenderedEmail", "TemplateRenderer"]

# No-break, narrow no-break and figure spaces -> a plain space (see render_sms).
_PLAIN_SPACES = str.maketrans({"\u00a0": " ", "\u202f": " ", "\u2007": " "})

#: The parts of an email kind: subject and text body are required, HTML is optional.
EMAIL_PARTS: tuple[str, str, str] = ("subject.txt", "body.txt", "body.html")
#: The one part of an SMS kind.
SMS_PART = "sms.txt"

_REQUIRED_PARTS: dict[Channel, tuple[str, ...]] = {
    Channel.EMAIL: EMAIL_PARTS[:2],
    Channel.SMS: (SMS_PART,),
}

# Without auto_reload nothing on disk is expected to change, so a "no such kind"
# answer is kept; with it, a kind a tenant adds shows up after this many seconds.
_NEGATIVE_TTL = 2.0
#: Lookup answers (where a part was found, whether a kind exists) kept per compiled template.
LOOKUPS_PER_TEMPLATE = 4


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """The rendered parts of an email.

    Attributes:
        subject: One line, stripped, checked for header injection.
        text: The text/plain body, stripped.
        html: The text/html body, or None when the kind has no ``body.html`` or it
            renders to whitespace only.
    """

    subject: str
    text: str
    html: str | None


# --- the renderer ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _KindAnswer:
    """A cached check_kind result: None when the kind is usable, else why not."""

    missing: tuple[str, str] | None = None  # (message, template)
    expires: float | None = None


_KIND_OK = _KindAnswer()


class _Resolved(NamedTuple):
    chain: Chain
    name: str  # "<chain>|label:relpath", what the environment loads
    display: str  # relpath, what errors show
    path: str  # the file it was found in


class TemplateRenderer:
    """Finds and renders notification templates for tenants.

    One renderer serves every tenant, with one sandboxed Jinja2 environment: the
    application templates are compiled once for all tenants, a tenant's own
    templates once for that tenant. The built-in templates, library code, render
    outside the sandbox, compiled once per catalog with their words translated
    (:mod:`._trusted`). Compiled templates and lookup
    answers are kept in LRU caches of a bounded size (:meth:`cache_stats`). It is
    safe to share between threads.

    Args:
        app_templates_dir: The host application's template folder, searched after
            the tenant's and before the built-in templates.
        max_output_chars: Most characters one rendered part may have.
        render_timeout: CPU seconds (of the rendering thread) one render call (a
            part, or all parts of an email) may use; a wall-clock backstop of
            five times it ends a render the machine starves.
        auto_reload: Notice edited template files without a restart (a few
            ``stat`` calls per render). Turn off when templates never change while
            the process runs.
        cache_size: Most compiled templates kept (the least recently used are
            dropped and compiled again when next needed); lookup answers are kept
            for ``4 x cache_size`` (tenant, kind, part, locale) combinations.

    Raises:
        ConfigurationError: A limit is not positive, or ``app_templates_dir`` is
            not a directory.
    """

    def __init__(
        self,
        app_templates_dir: Path | None = None,
        *,
        max_output_chars: int = 262_144,
        render_timeout: float = 2.0,
        auto_reload: bool = True,
        cache_size: int = 2000,
    ) -> None:
        if max_output_chars <= 0:
            raise ConfigurationError("must be positive", key="templates.max_output_chars")
        if render_timeout <= 0:
            raise ConfigurationError("must be positive", key="templates.render_timeout")
        if cache_size <= 0:
            raise ConfigurationError("must be positive", key="templates.cache_size")
        if app_templates_dir is not None:
            app_templates_dir = Path(app_templates_dir)
            if not app_templates_dir.is_dir():
                raise ConfigurationError(
                    f"{str(app_templates_dir)!r} is not a directory",
                    key="templates_dir",
                )
        self.app_templates_dir = app_templates_dir
        self.max_output_chars = max_output_chars
        self.render_timeout = render_timeout
        self.auto_reload = auto_reload
        shared = [make_source(BUILTIN, BUILTIN_DIR)]
        if app_templates_dir is not None:
            shared.insert(0, make_source(APP, app_templates_dir))
        lookups = cache_size * LOOKUPS_PER_TEMPLATE
        self._loader = ChainLoader(shared, auto_reload=auto_reload, cache_size=lookups)
        self._env = SandboxEnvironment(
            self._loader,
            max_output_chars=max_output_chars,
            auto_reload=auto_reload,
            cache_size=cache_size,
        )
        # The library's own templates skip the sandbox (see ._trusted); one
        # cache, and so one bound, for what both environments compile.
        self._builtin = BuiltinEnvironments(
            self._loader, autoescape=autoescape, auto_reload=auto_reload, cache=self._env.cache
        )
        self._chains: LRUCache[Path | None, Chain] = LRUCache(cache_size)
        self._chains_lock = threading.Lock()
        self._kinds: LRUCache[tuple[Path | None, str, str, str], _KindAnswer] = LRUCache(lookups)
        # (templates_dir, kind, part, locale) -> (where the part was found, expiry or None)
        self._resolved: LRUCache[
            tuple[Path | None, str, str, str], tuple[_Resolved, float | None]
        ] = LRUCache(lookups)

    # -- public API

    def check_kind(
        self, kind: str, channel: Channel, *, templates_dir: Path | None = None, locale: str = "en"
    ) -> None:
        """Make sure some source has every part ``channel`` needs for ``kind``.

        Email needs ``subject.txt`` and ``body.txt``; SMS needs ``sms.txt``. The
        answer is cached per (templates_dir, kind, channel, locale), so a repeated
        check costs a dictionary lookup. A "not found" answer is re-checked after
        two seconds when ``auto_reload`` is on.

        Raises:
            TemplateNotFoundError: ``kind`` is not a safe name, or a required part
                is missing from every source.
        """
        key = (templates_dir, kind, channel, locale)
        answer = self._kinds.get(key)
        if answer is _KIND_OK:
            return
        if (
            answer is not None
            and answer.missing is not None
            and (answer.expires is None or time.monotonic() < answer.expires)
        ):
            message, template = answer.missing
            raise TemplateNotFoundError(message, template=template)
        self._check_name(kind, "kind")
        tdir = Path(templates_dir) if templates_dir is not None else None
        for part in _REQUIRED_PARTS[Channel(channel)]:
            resolved, tried = self._resolve(tdir, kind, part, locale)
            if resolved is None:
                message, template = self._not_found_message(kind, part, locale, tried)
                expires = time.monotonic() + _NEGATIVE_TTL if self.auto_reload else None
                self._kinds[key] = _KindAnswer((message, template), expires)
                raise TemplateNotFoundError(message, template=template)
        self._kinds[key] = _KIND_OK

    def render(
        self,
        kind: str,
        part: str,
        context: Mapping[str, Any],
        *,
        templates_dir: Path | None = None,
        locale: str = "en",
    ) -> str:
        """Render one part of a kind, as it is (not stripped).

        Args:
            kind: The template kind, e.g. ``"welcome"``.
            part: The part's file name, e.g. ``"body.html"``.
            context: The template variables. ``locale`` is added unless present.
            templates_dir: The tenant's template folder, if it has one.
            locale: The effective locale, e.g. ``"de-AT"``.

        Raises:
            TemplateNotFoundError: No source has the part (or a name is unsafe).
            TemplateRenderError: A syntax error, undefined variable or other failure.
            TemplateSecurityError: The template broke a sandbox rule.
            TemplateLimitError: Output over ``max_output_chars``, or over time.
        """
        resolved = self._lookup(kind, part, context, templates_dir, locale, required=True)
        babel_locale(context.get("locale", locale))  # its data read outside the time limit
        with self._budget():
            return self._render_resolved(resolved, context, locale)

    def render_email(
        self,
        kind: str,
        context: Mapping[str, Any],
        *,
        templates_dir: Path | None = None,
        locale: str = "en",
    ) -> RenderedEmail:
        """Render the subject, text and HTML parts of an email kind.

        All parts share one ``render_timeout``. The subject is stripped and must
        then be a single line; the text body is stripped; the HTML body is None
        when the kind has none or it renders to whitespace only.

        Raises:
            HeaderInjectionError: The rendered subject holds CR, LF or NUL.
            TemplateNotFoundError, TemplateRenderError, TemplateSecurityError,
            TemplateLimitError: As for :meth:`render`.
        """
        subject_t = self._lookup(kind, "subject.txt", context, templates_dir, locale, required=True)
        text_t = self._lookup(kind, "body.txt", context, templates_dir, locale, required=True)
        html_t = self._lookup(kind, "body.html", context, templates_dir, locale, required=False)
        babel_locale(context.get("locale", locale))  # its data read outside the time limit
        if all(is_builtin_name(t.name) for t in (subject_t, text_t, html_t) if t is not None):
            # Library templates only, which no time limit is for (see _generate):
            # no budget to set (and no CPU clock to read) for them.
            subject = self._render_resolved(subject_t, context, locale)
            text = self._render_resolved(text_t, context, locale)
            html = self._render_resolved(html_t, context, locale) if html_t else None
        else:
            with self._budget():
                subject = self._render_resolved(subject_t, context, locale)
                text = self._render_resolved(text_t, context, locale)
                html = self._render_resolved(html_t, context, locale) if html_t else None
        subject = check_header_value(subject.strip(), "subject")
        if html is not None and not html.strip():
            html = None
        return RenderedEmail(subject=subject, text=text.strip(), html=html)

    def render_sms(
        self,
        kind: str,
        context: Mapping[str, Any],
        *,
        templates_dir: Path | None = None,
        locale: str = "en",
    ) -> str:
        """Render the ``sms.txt`` part of a kind, stripped, with plain spaces.

        Babel writes no-break spaces into numbers and amounts (``1 234,50 €``);
        none is in the GSM 03.38 alphabet, so one would turn the whole SMS into
        UCS-2: 70 characters a segment instead of 160.

        Raises:
            TemplateNotFoundError, TemplateRenderError, TemplateSecurityError,
            TemplateLimitError: As for :meth:`render`.
        """
        text = self.render(kind, SMS_PART, context, templates_dir=templates_dir, locale=locale)
        return text.translate(_PLAIN_SPACES).strip()

    @property
    def max_work(self) -> int:
        """The work one part may do, in characters (8 x ``max_output_chars``): the
        most context a render can work with, which sends are checked against."""
        return self.max_output_chars * WORK_FACTOR

    def clear_cache(self) -> None:
        """Forget compiled templates and lookup answers (after moving template folders)."""
        self._env.cache.clear()
        self._builtin.forget()
        self._chains.clear()
        self._kinds.clear()
        self._resolved.clear()

    def cache_stats(self) -> dict[str, CacheStats]:
        """Hits, misses, size and bound of each cache, by name.

        ``templates``: compiled templates; ``lookups``: where each part of a kind
        was found, per tenant and locale; ``kinds``: whether a kind has the parts
        a channel needs, per tenant and locale.
        """
        return {
            "templates": self._env.cache.stats(),
            "lookups": self._resolved.stats(),
            "kinds": self._kinds.stats(),
        }

    def close(self) -> None:
        """Release the caches. The renderer still works afterwards, starting cold."""
        self.clear_cache()

    def __enter__(self) -> TemplateRenderer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lookup

    @staticmethod
    def _check_name(name: str, what: str) -> None:
        if not is_safe_name(name):
            raise TemplateNotFoundError(
                f"{name!r} is not a valid template {what} (lower-case letters, digits, "
                "'_', '.', '-'; no '..' or '/')",
                template=name if isinstance(name, str) else None,
            )

    def _chain(self, templates_dir: Path | None) -> Chain:
        chain = self._chains.get(templates_dir)
        if chain is not None:
            return chain
        with self._chains_lock:
            chain = self._chains.get(templates_dir)
            if chain is None:
                tenant = None
                if templates_dir is not None:
                    self._check_not_nested(templates_dir)
                    tenant = make_source(TENANT, templates_dir)
                chain = self._chains[templates_dir] = self._loader.new_chain(tenant)
        return chain

    def _check_not_nested(self, templates_dir: Path) -> None:
        if self.app_templates_dir is not None:
            check_apart(
                {"templates_dir": self.app_templates_dir, "tenant templates_dir": templates_dir}
            )

    def _resolve(
        self, templates_dir: Path | None, kind: str, part: str, locale: str
    ) -> tuple[_Resolved | None, list[str]]:
        """Find the first source and locale folder holding ``kind/part``."""
        chain = self._chain(templates_dir)
        dirs = locale_folders(locale) if isinstance(locale, str) else ()
        relpaths = [f"{d}/{kind}/{part}" for d in dirs] + [f"{kind}/{part}"]
        tried: list[str] = []
        for source in chain.sources:
            for relpath in relpaths:
                path = find(source, relpath.split("/"))
                if path is not None:
                    name = chain.name(source, relpath)
                    return _Resolved(chain, name, relpath, str(path)), tried
                tried.append(f"{source.label}:{relpath}")
        return None, tried

    def _resolve_cached(
        self, templates_dir: Path | None, kind: str, part: str, locale: str
    ) -> tuple[_Resolved | None, list[str]]:
        # Finding a part takes several stat() calls per source; remember where it
        # was found. With auto_reload the answer is trusted for _NEGATIVE_TTL
        # seconds (a part a tenant adds is noticed soon after) and only while its
        # file is still there (a part a tenant removes falls back at once).
        key = (templates_dir, kind, part, locale)
        hit = self._cached_lookup(key)
        if hit is not None:
            return hit, []
        self._check_name(kind, "kind")
        self._check_name(part, "part")
        resolved, tried = self._resolve(templates_dir, kind, part, locale)
        if resolved is None:
            return resolved, tried  # the error message lists what was tried
        expires = time.monotonic() + _NEGATIVE_TTL if self.auto_reload else None
        self._resolved[key] = (resolved, expires)
        return resolved, tried

    def _cached_lookup(self, key: tuple[Path | None, str, str, str]) -> _Resolved | None:
        """Where a part was found, if that is known and still holds. Only parts whose
        names were checked are remembered, so a hit needs no check of the names."""
        try:
            cached = self._resolved.get(key)
        except TypeError:  # a name that is no string: the checks say what is wrong
            return None
        if cached is None:
            return None
        hit, valid_until = cached
        if valid_until is None or (time.monotonic() < valid_until and os.path.isfile(hit.path)):
            return hit
        return None

    @staticmethod
    def _not_found_message(
        kind: str, part: str, locale: str, tried: Sequence[str]
    ) -> tuple[str, str]:
        template = f"{kind}/{part}"
        message = f"no template {template!r} for locale {locale!r}"
        if tried:
            message += "; tried " + ", ".join(tried)
        return message, template

    # -- rendering

    @contextmanager
    def _budget(self) -> Iterator[None]:
        if BUDGET.get() is not UNLIMITED:
            yield  # an outer render call already set the clock
            return
        budget = Budget(self.render_timeout, self.max_work)
        token = BUDGET.set(budget)
        try:
            yield
        finally:
            BUDGET.reset(token)

    @overload
    def _lookup(
        self,
        kind: str,
        part: str,
        context: Mapping[str, Any],
        templates_dir: Path | None,
        locale: str,
        *,
        required: Literal[True],
    ) -> _Resolved: ...
    @overload
    def _lookup(
        self,
        kind: str,
        part: str,
        context: Mapping[str, Any],
        templates_dir: Path | None,
        locale: str,
        *,
        required: bool,
    ) -> _Resolved | None: ...
    def _lookup(
        self,
        kind: str,
        part: str,
        context: Mapping[str, Any],
        templates_dir: Path | None,
        locale: str,
        *,
        required: bool,
    ) -> _Resolved | None:
        tdir = templates_dir
        if tdir is not None and not isinstance(tdir, Path):
            tdir = Path(tdir)
        resolved, tried = self._resolve_cached(tdir, kind, part, locale)
        if resolved is None and required:
            message, template = self._not_found_message(kind, part, locale, tried)
            raise TemplateNotFoundError(message, template=template, tenant_id=_tenant_id(context))
        return resolved

    def _render_resolved(self, resolved: _Resolved, context: Mapping[str, Any], locale: str) -> str:
        variables = dict(context)
        variables.setdefault("locale", locale)
        token = CURRENT_CHAIN.set(resolved.chain)
        try:
            return self._generate(resolved, variables)
        except TemplateError:
            raise
        except Exception as err:
            raise _translate(err, resolved, _tenant_id(context)) from err
        finally:
            CURRENT_CHAIN.reset(token)

    def _generate(self, resolved: _Resolved, variables: dict[str, Any]) -> str:
        budget = BUDGET.get()
        budget.start_part()
        cap = self.max_output_chars
        if is_builtin_name(resolved.name):
            # Library code whose output grows with the context, which was checked
            # against max_work: rendered in one piece, then measured.
            text = self._builtin.get(variables["locale"]).render(resolved.name, variables)
            if len(text) > cap:
                raise LimitExceeded(f"the rendered output is over the limit of {cap:,} characters")
            # Not charged to the time limit: that bounds what a tenant's template
            # may do, and this work is done (the first render also compiles the
            # template, which on a loaded machine can take longer than the limit).
            return text
        template = self._env.get_template(resolved.name)
        chunks: list[str] = []
        size = 0
        stream = cast(Generator[str, None, None], template.generate(variables))
        try:
            # No clock here: whatever can repeat (loops, calls, captured output)
            # looks at it, and between two of those a template emits at most
            # what its source holds.
            for chunk in stream:
                size += len(chunk)
                if size > cap:
                    raise LimitExceeded(
                        f"the rendered output is over the limit of {cap:,} characters"
                    )
                chunks.append(chunk)
        finally:
            stream.close()
        budget.spend(size)
        return "".join(chunks)


def _tenant_id(context: Mapping[str, Any]) -> str | None:
    tenant = context.get("tenant")
    if isinstance(tenant, Mapping):
        tenant_id = tenant.get("id")
        if isinstance(tenant_id, str):
            return tenant_id
    return None


_SOURCE_NAMES = {TENANT: "tenant", APP: "app", BUILTIN: "built-in"}


def _locate(err: BaseException, resolved: _Resolved) -> tuple[str, str, int | None]:
    """The innermost template (name, source label, line) in ``err``'s traceback."""
    found: tuple[str, str, int | None] | None = None
    tb = err.__traceback__
    while tb is not None:
        origin = resolved.chain.where(tb.tb_frame.f_code.co_filename)
        if origin is not None:
            found = (origin[0], origin[1], tb.tb_lineno)
        tb = tb.tb_next
    if found is not None:
        return found
    return resolved.display, _label(resolved.name), None


def _label(name: str) -> str:
    return display_name(name).partition(":")[0]


def _translate(err: Exception, resolved: _Resolved, tenant_id: str | None) -> TemplateError:
    """Turn an exception raised while loading or rendering into a TemplateError."""
    if isinstance(err, jinja2.TemplateSyntaxError):
        label, sep, name = display_name(err.name or "").partition(":")
        if not sep or label not in LABELS:
            label, name = _label(resolved.name), display_name(err.name or resolved.display)
        where: tuple[str, str, int | None] = (name, label, err.lineno)
        detail = f"syntax error: {err.message}"
    else:
        where = _locate(err, resolved)
        if isinstance(err, jinja2.TemplateNotFound) and err.name == resolved.name:
            # Deleted between lookup and load.
            return TemplateNotFoundError(
                f"{resolved.display}: the template disappeared while loading",
                template=resolved.display,
                tenant_id=tenant_id,
            )
        if isinstance(err, jinja2.TemplateNotFound):
            missing = display_name(str(err.name or ""))
            detail = f"includes {missing!r}, which no template source has"
        elif isinstance(err, LimitExceeded | SecurityError | jinja2.UndefinedError):
            detail = str(err)
        elif isinstance(err, RecursionError):
            detail = "nested too deeply (a macro, include, import or extends that calls itself?)"
        elif isinstance(err, MemoryError):
            detail = "out of memory"
        else:
            detail = f"{type(err).__name__}: {err}"
    name, label, line = where
    origin = f"{_SOURCE_NAMES.get(label, label)} template"
    if line is not None:
        origin += f", line {line}"
    if name != resolved.display:
        origin += f", rendering {resolved.display}"
    message = f"{name}: {detail} ({origin})"
    cls: type[TemplateError]
    if isinstance(err, LimitExceeded | MemoryError | RecursionError):
        cls = TemplateLimitError
    elif isinstance(err, SecurityError):
        cls = TemplateSecurityError
    else:
        cls = TemplateRenderError
    return cls(message, template=name, tenant_id=tenant_id)
