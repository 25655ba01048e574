"""Render notification templates in a Jinja2 sandbox, with size and time limits.

A *kind* (``"order_confirmation"``, ``"welcome"``, or one a host app defines) is a
folder of *parts*: ``subject.txt``, ``body.txt`` and the optional ``body.html`` for
email, ``sms.txt`` for SMS. :class:`TemplateRenderer` finds each part in a chain
of sources and renders it.

Lookup order
------------
Sources, first match wins: the tenant's ``templates_dir`` (if any), the host
application's ``app_templates_dir`` (if any), then the built-in
``default_templates`` shipped in this package. Within each source the renderer
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
Jinja's own: ``money`` (``{{ total|money(currency) }}``, see :func:`format_money`)
and ``css_color`` (``{{ color|css_color('#1f2937') }}`` passes a hex colour or a
colour name and replaces anything else by the default). ``.html`` parts are
autoescaped, ``.txt`` parts are not. Undefined variables are errors
(``StrictUndefined``); use ``x|default(...)`` or ``x is defined`` for optional ones.
Blocks are trimmed (``trim_blocks`` and ``lstrip_blocks``), so a line holding only
a ``{% ... %}`` tag leaves no blank line behind.

Untrusted templates
-------------------
Tenant templates are untrusted. They run in Jinja's
``ImmutableSandboxedEnvironment`` (no access to ``_``-prefixed attributes or
Python internals, no mutation of lists and dicts); a violation raises
:class:`~tenant_notify.errors.TemplateSecurityError`. On top of the sandbox each
render is limited in output size (``max_output_chars``, per part) and in time
(``render_timeout``, per call of :meth:`TemplateRenderer.render`,
:meth:`~TemplateRenderer.render_email` or :meth:`~TemplateRenderer.render_sms`);
exceeding either raises :class:`~tenant_notify.errors.TemplateLimitError`.

What the limits cover:

* Output is produced with ``Template.generate()`` and counted chunk by chunk;
  rendering stops at the first chunk past the cap, before the whole text exists.
* The clock is checked at every output chunk, at every function or method call
  made by the template (macros and ``caller()`` included), at every iteration of
  every ``{% for %}`` loop, and at every step of ``range()`` (which yields lazily
  and keeps the sandbox's limit of 100,000 items).
* Values are refused *before* they are built when they would be larger than the
  output cap (measured as the characters they would print as): ``*`` (string and
  list repetition, big integer products), ``**`` (exponents over 100 or huge
  integer results), ``+`` on strings and lists, ``%`` and ``str.format`` (field
  widths are summed; nested ``{:{}}`` widths and ``%*d`` are refused), ``~``
  operands, each ``{{ ... }}`` value, the filters ``replace``, ``join``,
  ``center``, ``indent``, ``wordwrap``, ``format``, ``batch``, ``slice``,
  ``tojson`` (indent at most 16) and ``urlize`` (``target``/``rel`` at most 256
  characters), the string methods ``center``, ``ljust``, ``rjust``, ``zfill``,
  ``expandtabs``, ``replace``, ``join`` and ``translate``, and ``lipsum()``.
* Template sources larger than 1 MiB are refused.

What they do not cover:

* A single operation implemented in C or in Jinja's Python that is slow on an
  input within the cap (sorting 100,000 items, a regular expression in
  ``urlize``) runs to its end before the clock is looked at again.
* Compiling a template is not timed (sources are capped at 1 MiB instead), and
  compiled templates are cached, so this cost is paid once per template version.
* Functions and objects the *host* puts in the context are trusted: their cost
  and output are theirs. Values measured by an estimate (numbers, nested
  containers) may print somewhat longer than estimated; the output counter then
  still stops the render.
* The limits are cooperative: they raise inside the rendering thread, they do
  not preempt it. Run delivery on workers (as the transports do) if a stuck
  render must not block the caller.

Money formatting
----------------
:func:`format_money` (and the ``money`` filter, which reads the ``locale``
template variable) rounds half up to the currency's minor units (JPY 0, BHD 3).
The sign is the currency's symbol when it has a non-alphabetic one (``$``, ``€``,
``£``, ``¥``, ...), otherwise the ISO code. German (``de``) puts it after the
number with a space and uses ``.`` for thousands and ``,`` for decimals:
``1.234,50 €``, ``99,99 $``, ``10,00 CHF``. Every other language uses the English
form: the symbol right before the number (``$1,234.50``), or the code and a space
(``CHF 10.00``).
"""

from __future__ import annotations

import copy
import functools
import re
import string
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from itertools import islice
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast, overload

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.loaders import split_template_path
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup, escape

from ._currencies import MINOR_UNITS, SYMBOLS
from ._headers import check_header_value
from .errors import (
    ConfigurationError,
    InvalidAmountError,
    InvalidCurrencyError,
    TemplateError,
    TemplateLimitError,
    TemplateNotFoundError,
    TemplateRenderError,
    TemplateSecurityError,
)
from .models import Channel

__all__ = [
    "EMAIL_PARTS",
    "SMS_PART",
    "RenderedEmail",
    "TemplateRenderer",
    "format_money",
]

#: The parts of an email kind: subject and text body are required, HTML is optional.
EMAIL_PARTS: tuple[str, str, str] = ("subject.txt", "body.txt", "body.html")
#: The one part of an SMS kind.
SMS_PART = "sms.txt"

_REQUIRED_PARTS: dict[Channel, tuple[str, ...]] = {
    Channel.EMAIL: EMAIL_PARTS[:2],
    Channel.SMS: (SMS_PART,),
}

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_MAX_NAME_LEN = 100
_LOCALE_RE = re.compile(r"([A-Za-z]{2,3})(?:[-_]([A-Za-z]{2}|[0-9]{3}))?")

_TENANT, _APP, _BUILTIN = "tenant", "app", "builtin"
_LABELS = frozenset({_TENANT, _APP, _BUILTIN})
_BUILTIN_DIR = Path(__file__).resolve().parent / "default_templates"

_MAX_SOURCE_BYTES = 1 << 20
_MAX_EXPONENT = 100
# About 4,900 decimal digits: past CPython's default int-to-str limit anyway.
_MAX_INT_BITS = 16_384
# A float printed with "%f" can take over 300 digits; every format field may.
_FIELD_ALLOWANCE = 330
_MAX_TOJSON_INDENT = 16
_MAX_URLIZE_EXTRA = 256
# Without auto_reload nothing on disk is expected to change, so a "no such kind"
# answer is kept; with it, a kind a tenant adds shows up after this many seconds.
_NEGATIVE_TTL = 2.0
_MAX_CACHE_ENTRIES = 10_000


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


# --- limits ---------------------------------------------------------------------------


class _LimitExceeded(Exception):
    """Raised inside a render; becomes TemplateLimitError at the boundary."""


@dataclass(frozen=True, slots=True)
class _Budget:
    deadline: float
    timeout: float


_BUDGET: ContextVar[_Budget | None] = ContextVar("tenant_notify_render_budget", default=None)


def _check_deadline() -> None:
    budget = _BUDGET.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise _LimitExceeded(f"rendering took longer than the {budget.timeout:g} s time limit")


def _refuse_over(size: int, cap: int, what: str) -> None:
    if size > cap:
        raise _LimitExceeded(
            f"{what} would produce about {size:,} characters; the limit is {cap:,}"
        )


def _decimal_width(value: Decimal) -> int:
    _sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return 4
    # "f" formatting writes out every zero an exponent stands for.
    return len(digits) + abs(exponent) + 2


def _weight(value: object, limit: int) -> int:
    """Estimate how many characters ``value`` prints as; stop counting past ``limit``.

    Every element of a container counts at least one, so the walk itself never
    takes more than ``limit`` steps.
    """
    total = 0
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item) or 1
        elif isinstance(item, bool) or item is None:
            total += 1
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, Decimal):
            total += _decimal_width(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 1
            stack.extend(islice(item, max(limit - total, 0) + 1))
        elif isinstance(item, Mapping):
            total += 1
            room = max(limit - total, 0) + 1
            for key, val in islice(item.items(), room):
                stack.append(key)
                stack.append(val)
        elif isinstance(item, range | _GuardedRange):
            total += 2 * len(item)
        else:
            total += 1
        if total > limit:
            break
    return total


def _max_weight(values: Sequence[object], cap: int) -> int:
    return max((_weight(value, cap) for value in values), default=0)


# printf-style conversion: %[(key)][flags][width][.precision][length]type
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.S)
_DIGITS = re.compile(r"\d+")


def _sum_widths(runs: Sequence[str], what: str, cap: int) -> int:
    total = 0
    for run in runs:
        # Checked before int(): a long run is a huge width, and int() refuses
        # more than a few thousand digits anyway.
        if len(run) > len(str(cap)):
            raise _LimitExceeded(f"{what} asks for a field width of {len(run)} digits")
        total += int(run)
    return total


def _check_percent_format(fmt: str, args: object, cap: int, what: str = "'%' formatting") -> None:
    fields = 0
    runs: list[str] = []
    for match in _PERCENT_SPEC.finditer(fmt):
        width, precision, conversion = match.groups()
        if conversion == "%":
            continue
        if width == "*" or precision == "*":
            raise _LimitExceeded(f"{what} with '*' widths is not allowed in templates")
        fields += 1
        runs.extend(run for run in (width, precision) if run)
    if isinstance(args, tuple):
        values: Sequence[object] = args
    elif isinstance(args, Mapping):
        values = list(args.values())
    else:
        values = (args,)
    widths = _sum_widths(runs, what, cap)
    _refuse_over(
        len(fmt) + widths + fields * (_max_weight(values, cap) + _FIELD_ALLOWANCE), cap, what
    )


def _check_brace_format(fmt: str, values: Sequence[object], cap: int) -> None:
    fields = 0
    runs: list[str] = []
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _literal, field_name, spec, _conversion in parsed:
        if field_name is None:
            continue
        fields += 1
        if spec and "{" in spec:
            raise _LimitExceeded("nested format fields ('{:{}}') are not allowed in templates")
        if spec:
            runs.extend(_DIGITS.findall(spec))
    widths = _sum_widths(runs, "str.format", cap)
    bound = len(fmt) + widths + fields * (_max_weight(values, cap) + _FIELD_ALLOWANCE)
    _refuse_over(bound, cap, "str.format")


def _replace_bound(target: Any, old: Any, new: Any, count: Any) -> int:
    try:
        hits = target.count(old) if len(old) else len(target) + 1
    except TypeError:
        return 0  # the real call raises the same TypeError
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return int(len(target) + hits * max(len(new) - len(old), 0))


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(exponent, int | float | Decimal) and abs(exponent) > _MAX_EXPONENT:  # type: ignore[operator]
        raise _LimitExceeded(f"exponent {exponent} is larger than {_MAX_EXPONENT}")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and base.bit_length() * exponent > _MAX_INT_BITS
    ):
        raise _LimitExceeded(f"'**' would build an integer of over {_MAX_INT_BITS} bits")


def _check_multiply(left: Any, right: Any, cap: int) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
            if times > 0:
                per_copy = _weight(seq, cap // times + 1)
                _refuse_over(per_copy * times, cap, "'*'")
            return
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > _MAX_INT_BITS
    ):
        raise _LimitExceeded(f"'*' would build an integer of over {_MAX_INT_BITS} bits")


_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


def _guard_str_method(
    name: str, target: str | bytes, args: tuple[Any, ...], cap: int
) -> tuple[Any, ...]:
    """Refuse a string method call whose result would pass ``cap``.

    Returns the arguments to call with (``join`` gets its iterable as a list,
    measured once).
    """
    what = f"str.{name}"
    if name in _WIDTH_METHODS and args and isinstance(args[0], int):
        _refuse_over(args[0], cap, what)
    elif name == "expandtabs":
        size = args[0] if args else 8
        tab: Any = "\t" if isinstance(target, str) else b"\t"
        if isinstance(size, int):
            _refuse_over(len(target) + target.count(tab) * size, cap, what)
    elif name == "replace" and len(args) >= 2:
        bound = _replace_bound(target, args[0], args[1], args[2] if len(args) > 2 else -1)
        _refuse_over(bound * (6 if isinstance(target, Markup) else 1), cap, what)
    elif name == "join" and args:
        items = list(args[0])
        bound = sum(_weight(item, cap) for item in items)
        bound += max(len(items) - 1, 0) * len(target)
        _refuse_over(bound * (6 if isinstance(target, Markup) else 1), cap, what)
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((_weight(v, cap) for v in args[0].values() if v is not None), default=1)
        _refuse_over(len(target) * longest, cap, what)
    return args


class _GuardedRange(Sequence[int]):
    """``range()`` for templates: lazy, at most MAX_RANGE items, clock checked per step."""

    __slots__ = ("_range",)

    def __init__(self, rng: range) -> None:
        self._range = rng

    def __iter__(self) -> Iterator[int]:
        for value in self._range:
            _check_deadline()
            yield value

    def __reversed__(self) -> Iterator[int]:
        for value in reversed(self._range):
            _check_deadline()
            yield value

    def __len__(self) -> int:
        return len(self._range)

    def __contains__(self, value: object) -> bool:
        return value in self._range

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> _GuardedRange: ...
    def __getitem__(self, index: int | slice) -> int | _GuardedRange:
        if isinstance(index, slice):
            return _GuardedRange(self._range[index])
        return self._range[index]

    def __repr__(self) -> str:
        return repr(self._range)


def _template_range(*args: int) -> _GuardedRange:
    rng = range(*args)
    try:
        size = len(rng)
    except OverflowError:
        size = MAX_RANGE + 1
    if size > MAX_RANGE:
        raise _LimitExceeded(f"range() of more than {MAX_RANGE:,} items is not allowed")
    return _GuardedRange(rng)


# --- money ----------------------------------------------------------------------------

_DE_SEPARATORS = str.maketrans(",.", ".,")


def _to_decimal(amount: object) -> Decimal:
    if isinstance(amount, bool):
        raise InvalidAmountError("is not a number", field="amount")
    try:
        if isinstance(amount, Decimal):
            value = amount
        elif isinstance(amount, int):
            value = Decimal(amount)
        elif isinstance(amount, float):
            value = Decimal(repr(amount))
        elif isinstance(amount, str):
            value = Decimal(amount.strip())
        else:
            raise InvalidAmountError(
                f"{type(amount).__name__} is not an amount; use Decimal, int or str",
                field="amount",
            )
    except InvalidOperation as err:
        raise InvalidAmountError(f"{amount!r} is not a number", field="amount") from err
    if not value.is_finite():
        raise InvalidAmountError("is not a finite number", field="amount")
    return value


def format_money(
    amount: Decimal | int | str | float, currency: str, locale: str | None = "en"
) -> str:
    """Format an amount of money for people to read.

    Rounds half up to the currency's minor units. German puts the sign after the
    number (``1.234,50 €``); every other language gets the English form
    (``$1,234.50``, ``CHF 10.00``). See the module docstring for the full rule.

    Args:
        amount: The amount, as a Decimal, an int, a numeric string or a float.
        currency: An ISO 4217 code (case-insensitive).
        locale: A locale such as ``"en"``, ``"de"`` or ``"de-AT"``; anything
            unrecognised formats as English.

    Returns:
        The formatted amount, e.g. ``"$99.99"`` or ``"99,99 $"``.

    Raises:
        InvalidCurrencyError: ``currency`` is not an ISO 4217 code.
        InvalidAmountError: ``amount`` is not a finite number, or too large to format.
    """
    code = currency.strip().upper() if isinstance(currency, str) else ""
    minor = MINOR_UNITS.get(code)
    if minor is None:
        raise InvalidCurrencyError(
            f"{currency!r} is not an ISO 4217 currency code", field="currency"
        )
    value = _to_decimal(amount)
    with localcontext() as ctx:
        ctx.prec = 60
        try:
            value = value.quantize(Decimal(1).scaleb(-minor), rounding=ROUND_HALF_UP)
        except InvalidOperation as err:
            raise InvalidAmountError("is too large to format", field="amount") from err
    sign = "-" if value < 0 else ""
    number = f"{abs(value):,.{minor}f}"
    symbol = SYMBOLS.get(code, "")
    # "CHF", "kr", "zł": letters read better as the ISO code.
    mark = symbol if symbol and not symbol.isalpha() else ""
    dirs = _locale_dirs(locale) if isinstance(locale, str) else ()
    if dirs and dirs[-1] == "de":
        return f"{sign}{number.translate(_DE_SEPARATORS)} {mark or code}"
    if mark:
        return f"{sign}{mark}{number}"
    return f"{sign}{code} {number}"


@jinja2.pass_context
def _money_filter(context: Context, amount: Any, currency: Any) -> str:
    locale = context.get("locale")
    return format_money(amount, currency, locale if isinstance(locale, str) else None)


_CSS_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})|[a-zA-Z]{3,20}")


def _css_color_filter(value: Any, default: str = "#1f2937") -> str:
    if isinstance(value, str) and _CSS_COLOR.fullmatch(value.strip()):
        return value.strip()
    return default


# --- locales and names ----------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _locale_dirs(locale: str) -> tuple[str, ...]:
    """The locale folders to try, most specific first: ``("de_AT", "de")``."""
    match = _LOCALE_RE.fullmatch(locale.strip())
    if match is None:
        return ()
    lang, region = match.group(1).lower(), match.group(2)
    return (f"{lang}_{region.upper()}", lang) if region else (lang,)


def _is_safe_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= _MAX_NAME_LEN
        and _NAME_RE.fullmatch(name) is not None
        and ".." not in name
    )


# --- loader ---------------------------------------------------------------------------


class _Source(NamedTuple):
    label: str
    root: Path
    resolved_root: Path


class _ChainLoader(jinja2.BaseLoader):
    """Loads ``label:path`` names from one source and plain names from the chain."""

    def __init__(self, sources: Sequence[_Source]) -> None:
        self.sources = tuple(sources)
        # filename -> (name as users know it, source label), for error messages
        self.origins: dict[str, tuple[str, str]] = {}

    def find(self, source: _Source, pieces: Sequence[str]) -> Path | None:
        path = source.root.joinpath(*pieces)
        if not path.is_file():
            return None
        # A symlink out of the source directory would let a template read any file.
        if not path.resolve().is_relative_to(source.resolved_root):
            return None
        return path

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        label, sep, rest = template.partition(":")
        if sep and label in _LABELS:
            candidates = [s for s in self.sources if s.label == label]
            relpath = rest
        else:
            candidates = list(self.sources)
            relpath = template
        pieces = split_template_path(relpath)
        for index, source in enumerate(candidates):
            path = self.find(source, pieces)
            if path is None:
                continue
            stat = path.stat()
            if stat.st_size > _MAX_SOURCE_BYTES:
                raise _LimitExceeded(
                    f"the template source is {stat.st_size:,} bytes; the limit is "
                    f"{_MAX_SOURCE_BYTES:,}"
                )
            text = path.read_text(encoding="utf-8")
            self.origins[str(path)] = ("/".join(pieces), source.label)
            return (
                text,
                str(path),
                self._uptodate(path, stat.st_mtime_ns, candidates[:index], pieces),
            )
        raise jinja2.TemplateNotFound(template)

    def _uptodate(
        self, path: Path, mtime_ns: int, earlier: Sequence[_Source], pieces: Sequence[str]
    ) -> Callable[[], bool]:
        def uptodate() -> bool:
            try:
                if path.stat().st_mtime_ns != mtime_ns:
                    return False
            except OSError:
                return False
            # A file that appeared in a source earlier in the chain now wins.
            return all(self.find(source, pieces) is None for source in earlier)

        return uptodate


# --- environment ----------------------------------------------------------------------


def _guard_node(name: str, node: nodes.Node) -> nodes.Expr:
    return nodes.Call(
        nodes.EnvironmentAttribute(name, lineno=node.lineno),
        [node],
        [],
        None,
        None,
        lineno=node.lineno,
    )


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles loops and ``~`` with calls into the environment's limits."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        guarded = copy.copy(node)
        guarded.iter = _guard_node("tn_iterate", node.iter)
        super().visit_For(guarded, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        parts = [_guard_node("tn_check_size", part) for part in node.nodes]
        super().visit_Concat(nodes.Concat(parts, lineno=node.lineno), frame)


_FilterCheck = Callable[..., Any]


class _SandboxEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the size and time limits described in the module."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _GuardedCodeGenerator

    def __init__(self, loader: _ChainLoader, *, max_output_chars: int, auto_reload: bool) -> None:
        self.max_output_chars = max_output_chars
        super().__init__(
            loader=loader,
            autoescape=_autoescape,
            undefined=jinja2.StrictUndefined,
            auto_reload=auto_reload,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=self.tn_check_size,
        )
        self.chain_loader = loader
        self.globals["range"] = _template_range
        self.globals["lipsum"] = self._lipsum
        self.filters["money"] = _money_filter
        self.filters["css_color"] = _css_color_filter
        self.filters["join"] = self._guarded_join(self.filters["join"])
        checks: dict[str, _FilterCheck] = {
            "replace": self._check_replace_filter,
            "center": self._check_center_filter,
            "indent": self._check_indent_filter,
            "wordwrap": self._check_wordwrap_filter,
            "format": self._check_format_filter,
            "batch": self._check_batch_filter,
            "slice": self._check_batch_filter,
            "tojson": self._check_tojson_filter,
            "urlize": self._check_urlize_filter,
        }
        for name, check in checks.items():
            self.filters[name] = _guarded_filter(self.filters[name], check)

    # -- hooks Jinja calls from compiled templates

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_deadline()
        target = getattr(obj, "__self__", None)
        if isinstance(target, str | bytes):
            args = _guard_str_method(
                getattr(obj, "__name__", ""), target, args, self.max_output_chars
            )
        return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        cap = self.max_output_chars
        if operator == "*":
            _check_multiply(left, right, cap)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            if isinstance(left, str | bytes | list | tuple) and isinstance(
                right, str | bytes | list | tuple
            ):
                _refuse_over(_weight(left, cap) + _weight(right, cap), cap, "'+'")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, right, cap)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt: str = value.__self__
        is_format_map = value.__name__ == "format_map"
        cap = self.max_output_chars
        sandboxed = wrapper

        def guarded(*args: Any, **kwargs: Any) -> str:
            values: list[Any] = [*args, *kwargs.values()]
            if is_format_map and len(args) == 1 and isinstance(args[0], Mapping):
                values = list(args[0].values())
            _check_brace_format(fmt, values, cap)
            return sandboxed(*args, **kwargs)

        return functools.update_wrapper(guarded, wrapper)

    def tn_iterate(self, iterable: Any) -> Iterator[Any]:
        for item in iterable:
            _check_deadline()
            yield item

    def tn_check_size(self, value: Any) -> Any:
        _refuse_over(_weight(value, self.max_output_chars), self.max_output_chars, "a value")
        return value

    def _lipsum(self, n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        # About 12 characters per word, with markup.
        _refuse_over(int(n) * int(max) * 12, self.max_output_chars, "lipsum()")
        return generate_lorem_ipsum(n=n, html=html, min=min, max=max)

    # -- checks for filters that can make much more text than they are given

    def _check_replace_filter(
        self, autoescape: bool, s: Any, old: Any, new: Any, count: Any = None
    ) -> Any:
        text, old_s, new_s = (str(escape(x)) if autoescape else str(x) for x in (s, old, new))
        bound = _replace_bound(text, old_s, new_s, count)
        _refuse_over(bound, self.max_output_chars, "the replace filter")
        return s

    def _guarded_join(self, original: Callable[..., str]) -> Callable[..., str]:
        cap = self.max_output_chars

        @jinja2.pass_eval_context
        def join(eval_ctx: EvalContext, value: Any, d: Any = "", attribute: Any = None) -> str:
            items = list(value)
            if attribute is not None:
                getter = make_attrgetter(self, attribute)
                items = [getter(item) for item in items]
            bound = sum(_weight(item, cap) for item in items)
            bound += max(len(items) - 1, 0) * len(str(d))
            _refuse_over(bound * (6 if eval_ctx.autoescape else 1), cap, "the join filter")
            return original(eval_ctx, items, d)

        return join

    def _check_center_filter(self, autoescape: bool, value: Any, width: Any = 80) -> Any:
        if isinstance(width, int):
            _refuse_over(width, self.max_output_chars, "the center filter")
        return value

    def _check_indent_filter(
        self, autoescape: bool, s: Any, width: Any = 4, first: Any = False, blank: Any = False
    ) -> Any:
        text = str(s)
        step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        bound = len(text) + (text.count("\n") + 1) * step
        _refuse_over(bound, self.max_output_chars, "the indent filter")
        return s

    def _check_wordwrap_filter(
        self,
        autoescape: bool,
        s: Any,
        width: Any = 79,
        break_long_words: Any = True,
        wrapstring: Any = None,
        break_on_hyphens: Any = True,
    ) -> Any:
        text = str(s)
        joint = len(wrapstring) if isinstance(wrapstring, str) else 2
        # A wrapped line and the one after it hold more than `width` characters
        # between them, so there are at most about 2 * len / width lines.
        per_line = width if isinstance(width, int) and width > 0 else 1
        lines = 2 * len(text) // per_line + text.count("\n") + 2
        _refuse_over(len(text) + lines * joint, self.max_output_chars, "the wordwrap filter")
        return s

    def _check_format_filter(self, autoescape: bool, value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_percent_format(
            str(value), kwargs or args, self.max_output_chars, "the format filter"
        )
        return value

    def _check_batch_filter(
        self, autoescape: bool, value: Any, count: Any, fill_with: Any = None
    ) -> Any:
        cap = self.max_output_chars
        if isinstance(count, int):
            _refuse_over(count, cap, "the batch/slice filter")
            if fill_with is not None:
                _refuse_over(count * _weight(fill_with, cap), cap, "the batch/slice filter")
        return value

    def _check_tojson_filter(self, autoescape: bool, value: Any, indent: Any = None) -> Any:
        step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
        if step > _MAX_TOJSON_INDENT:
            raise _LimitExceeded(f"tojson indent is limited to {_MAX_TOJSON_INDENT}")
        return value

    def _check_urlize_filter(
        self,
        autoescape: bool,
        value: Any,
        trim_url_limit: Any = None,
        nofollow: Any = False,
        target: Any = None,
        rel: Any = None,
        extra_schemes: Any = None,
    ) -> Any:
        extra = sum(_weight(x, _MAX_URLIZE_EXTRA) for x in (target, rel, extra_schemes) if x)
        if extra > _MAX_URLIZE_EXTRA:
            raise _LimitExceeded(
                f"urlize target, rel and extra_schemes are limited to "
                f"{_MAX_URLIZE_EXTRA} characters"
            )
        return value


def _autoescape(name: str | None) -> bool:
    return name is not None and name.endswith((".html", ".htm"))


def _guarded_filter(original: Callable[..., Any], check: _FilterCheck) -> Callable[..., Any]:
    """Wrap a Jinja filter so ``check(autoescape, value, *args, **kwargs)`` sees its
    arguments first; the check raises to refuse and otherwise returns ``value``.
    """
    # Jinja marks filters that take the context, eval context or environment
    # first; functools.wraps copies that mark onto the wrapper.
    takes_ctx = getattr(original, "jinja_pass_arg", None) is not None

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if takes_ctx:
            ctx, value, *rest = args
            autoescape = (
                bool(getattr(ctx, "autoescape", False)) if isinstance(ctx, EvalContext) else False
            )
            value = check(autoescape, value, *rest, **kwargs)
            return original(ctx, value, *rest, **kwargs)
        value, *rest = args
        value = check(False, value, *rest, **kwargs)
        return original(value, *rest, **kwargs)

    return guarded


# --- the renderer ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _KindAnswer:
    """A cached check_kind result: None when the kind is usable, else why not."""

    missing: tuple[str, str] | None = None  # (message, template)
    expires: float | None = None


_KIND_OK = _KindAnswer()


class _Resolved(NamedTuple):
    env: _SandboxEnvironment
    name: str  # "label:relpath", what the environment loads
    display: str  # relpath, what errors show


class TemplateRenderer:
    """Finds and renders notification templates for tenants.

    One renderer serves every tenant: it keeps a sandboxed Jinja2 environment (and
    its compiled-template cache) per template source chain, that is per tenant
    ``templates_dir``. It is safe to share between threads.

    Args:
        app_templates_dir: The host application's template folder, searched after
            the tenant's and before the built-in templates.
        max_output_chars: Most characters one rendered part may have.
        render_timeout: Seconds one render call (a part, or all parts of an email)
            may take.
        auto_reload: Notice edited template files without a restart (a few
            ``stat`` calls per render). Turn off when templates never change while
            the process runs.

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
    ) -> None:
        if max_output_chars <= 0:
            raise ConfigurationError("must be positive", key="templates.max_output_chars")
        if render_timeout <= 0:
            raise ConfigurationError("must be positive", key="templates.render_timeout")
        if app_templates_dir is not None:
            app_templates_dir = Path(app_templates_dir)
            if not app_templates_dir.is_dir():
                raise ConfigurationError(
                    f"{str(app_templates_dir)!r} is not a directory",
                    key="templates.app_templates_dir",
                )
        self.app_templates_dir = app_templates_dir
        self.max_output_chars = max_output_chars
        self.render_timeout = render_timeout
        self.auto_reload = auto_reload
        self._envs: dict[Path | None, _SandboxEnvironment] = {}
        self._envs_lock = threading.Lock()
        self._kinds: dict[tuple[Path | None, str, str, str], _KindAnswer] = {}
        # (templates_dir, kind, part, locale) -> (where the part was found, expiry or None)
        self._resolved: dict[
            tuple[Path | None, str, str, str], tuple[_Resolved | None, float | None]
        ] = {}

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
                self._remember(key, _KindAnswer((message, template), expires))
                raise TemplateNotFoundError(message, template=template)
        self._remember(key, _KIND_OK)

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
        """Render the ``sms.txt`` part of a kind, stripped.

        Raises:
            TemplateNotFoundError, TemplateRenderError, TemplateSecurityError,
            TemplateLimitError: As for :meth:`render`.
        """
        return self.render(
            kind, SMS_PART, context, templates_dir=templates_dir, locale=locale
        ).strip()

    def clear_cache(self) -> None:
        """Forget compiled templates and lookup answers (after moving template folders)."""
        with self._envs_lock:
            self._envs.clear()
        self._kinds.clear()
        self._resolved.clear()

    def close(self) -> None:
        """Release the caches. The renderer still works afterwards, starting cold."""
        self.clear_cache()

    def __enter__(self) -> TemplateRenderer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lookup

    def _remember(self, key: tuple[Path | None, str, str, str], answer: _KindAnswer) -> None:
        # Keys come from callers (locale strings, tenant dirs); stay bounded.
        if len(self._kinds) >= _MAX_CACHE_ENTRIES:
            self._kinds.clear()
        self._kinds[key] = answer

    @staticmethod
    def _check_name(name: str, what: str) -> None:
        if not _is_safe_name(name):
            raise TemplateNotFoundError(
                f"{name!r} is not a valid template {what} (lower-case letters, digits, "
                "'_', '.', '-'; no '..' or '/')",
                template=name if isinstance(name, str) else None,
            )

    def _env(self, templates_dir: Path | None) -> _SandboxEnvironment:
        env = self._envs.get(templates_dir)
        if env is not None:
            return env
        with self._envs_lock:
            env = self._envs.get(templates_dir)
            if env is None:
                sources = []
                if templates_dir is not None:
                    sources.append(_make_source(_TENANT, templates_dir))
                if self.app_templates_dir is not None:
                    sources.append(_make_source(_APP, self.app_templates_dir))
                sources.append(_make_source(_BUILTIN, _BUILTIN_DIR))
                env = _SandboxEnvironment(
                    _ChainLoader(sources),
                    max_output_chars=self.max_output_chars,
                    auto_reload=self.auto_reload,
                )
                self._envs[templates_dir] = env
        return env

    def _resolve(
        self, templates_dir: Path | None, kind: str, part: str, locale: str
    ) -> tuple[_Resolved | None, list[str]]:
        """Find the first source and locale folder holding ``kind/part``."""
        env = self._env(templates_dir)
        dirs = _locale_dirs(locale) if isinstance(locale, str) else ()
        relpaths = [f"{d}/{kind}/{part}" for d in dirs] + [f"{kind}/{part}"]
        tried: list[str] = []
        for source in env.chain_loader.sources:
            for relpath in relpaths:
                name = f"{source.label}:{relpath}"
                if env.chain_loader.find(source, relpath.split("/")) is not None:
                    return _Resolved(env, name, relpath), tried
                tried.append(name)
        return None, tried

    def _resolve_cached(
        self, templates_dir: Path | None, kind: str, part: str, locale: str
    ) -> tuple[_Resolved | None, list[str]]:
        # Finding a part takes several stat() calls per source; remember where it
        # was found. With auto_reload the answer is trusted for _NEGATIVE_TTL
        # seconds, so a part a tenant adds or removes is noticed soon after.
        key = (templates_dir, kind, part, locale)
        cached = self._resolved.get(key)
        if cached is not None and (cached[1] is None or time.monotonic() < cached[1]):
            return cached[0], []
        resolved, tried = self._resolve(templates_dir, kind, part, locale)
        if resolved is None:
            return resolved, tried  # the error message lists what was tried
        if len(self._resolved) >= _MAX_CACHE_ENTRIES:
            self._resolved.clear()
        expires = time.monotonic() + _NEGATIVE_TTL if self.auto_reload else None
        self._resolved[key] = (resolved, expires)
        return resolved, tried

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
        if _BUDGET.get() is not None:
            yield  # an outer render call already set the clock
            return
        budget = _Budget(time.monotonic() + self.render_timeout, self.render_timeout)
        token = _BUDGET.set(budget)
        try:
            yield
        finally:
            _BUDGET.reset(token)

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
        self._check_name(kind, "kind")
        self._check_name(part, "part")
        tdir = Path(templates_dir) if templates_dir is not None else None
        resolved, tried = self._resolve_cached(tdir, kind, part, locale)
        if resolved is None and required:
            message, template = self._not_found_message(kind, part, locale, tried)
            raise TemplateNotFoundError(message, template=template, tenant_id=_tenant_id(context))
        return resolved

    def _render_resolved(self, resolved: _Resolved, context: Mapping[str, Any], locale: str) -> str:
        variables = dict(context)
        variables.setdefault("locale", locale)
        try:
            return self._generate(resolved, variables)
        except TemplateError:
            raise
        except Exception as err:
            raise _translate(err, resolved, _tenant_id(context)) from err

    def _generate(self, resolved: _Resolved, variables: dict[str, Any]) -> str:
        template = resolved.env.get_template(resolved.name)
        cap = self.max_output_chars
        chunks: list[str] = []
        size = 0
        stream = cast(Generator[str, None, None], template.generate(variables))
        try:
            for chunk in stream:
                size += len(chunk)
                if size > cap:
                    raise _LimitExceeded(
                        f"the rendered output is over the limit of {cap:,} characters"
                    )
                _check_deadline()
                chunks.append(chunk)
        finally:
            stream.close()
        return "".join(chunks)


def _make_source(label: str, root: Path) -> _Source:
    return _Source(label, root, root.resolve())


def _tenant_id(context: Mapping[str, Any]) -> str | None:
    tenant = context.get("tenant")
    if isinstance(tenant, Mapping):
        tenant_id = tenant.get("id")
        if isinstance(tenant_id, str):
            return tenant_id
    return None


_SOURCE_NAMES = {_TENANT: "tenant", _APP: "app", _BUILTIN: "built-in"}


def _locate(err: BaseException, resolved: _Resolved) -> tuple[str, str, int | None]:
    """The innermost template (name, source label, line) in ``err``'s traceback."""
    origins = resolved.env.chain_loader.origins
    found: tuple[str, str, int | None] | None = None
    tb = err.__traceback__
    while tb is not None:
        origin = origins.get(tb.tb_frame.f_code.co_filename)
        if origin is not None:
            found = (origin[0], origin[1], tb.tb_lineno)
        tb = tb.tb_next
    if found is not None:
        return found
    return resolved.display, resolved.name.partition(":")[0], None


def _translate(err: Exception, resolved: _Resolved, tenant_id: str | None) -> TemplateError:
    """Turn an exception raised while loading or rendering into a TemplateError."""
    if isinstance(err, jinja2.TemplateSyntaxError):
        label, sep, name = (err.name or "").partition(":")
        if not sep or label not in _LABELS:
            label, name = resolved.name.partition(":")[0], err.name or resolved.display
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
            detail = f"includes {err.name!r}, which no template source has"
        elif isinstance(err, _LimitExceeded | SecurityError | jinja2.UndefinedError):
            detail = str(err)
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
    if isinstance(err, _LimitExceeded | MemoryError):
        cls = TemplateLimitError
    elif isinstance(err, SecurityError):
        cls = TemplateSecurityError
    else:
        cls = TemplateRenderError
    return cls(message, template=name, tenant_id=tenant_id)
