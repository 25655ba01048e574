"""The hardened Jinja2 sandbox that tenant templates run in.

This module holds the environment and its limits; finding templates and
turning failures into :class:`~tenant_notify.errors.TemplateError` is done by
:mod:`tenant_notify.templates._renderer`, which starts the clock for each render
(:data:`BUDGET`) and catches :class:`LimitExceeded`.

Untrusted templates
-------------------
Tenant templates are untrusted. They run in Jinja's
``ImmutableSandboxedEnvironment`` (no access to ``_``-prefixed attributes or
Python internals, no mutation of lists and dicts); a violation raises
:class:`~tenant_notify.errors.TemplateSecurityError`. On top of the sandbox each
render is limited in output size (``max_output_chars``, per part) and in time
(``render_timeout``, per call of
:meth:`~tenant_notify.templates.TemplateRenderer.render`,
:meth:`~tenant_notify.templates.TemplateRenderer.render_email` or
:meth:`~tenant_notify.templates.TemplateRenderer.render_sms`);
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
* Template sources larger than 1 MiB are refused (by the loader, in
  :mod:`tenant_notify.templates._loader`).

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
"""

from __future__ import annotations

import copy
import functools
import re
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import Any, Generic, TypeVar, overload

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup, escape

from ._filters import (
    css_color_filter,
    date_filter,
    datetime_filter,
    money_filter,
    number_filter,
)

_MAX_EXPONENT = 100
# About 4,900 decimal digits: past CPython's default int-to-str limit anyway.
_MAX_INT_BITS = 16_384
# A float printed with "%f" can take over 300 digits; every format field may.
_FIELD_ALLOWANCE = 330
_MAX_TOJSON_INDENT = 16
_MAX_URLIZE_EXTRA = 256


# --- limits ---------------------------------------------------------------------------


class LimitExceeded(Exception):
    """Raised inside a render; becomes TemplateLimitError at the boundary."""


@dataclass(frozen=True, slots=True)
class Budget:
    deadline: float
    timeout: float


BUDGET: ContextVar[Budget | None] = ContextVar("tenant_notify_render_budget", default=None)


def check_deadline() -> None:
    budget = BUDGET.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise LimitExceeded(f"rendering took longer than the {budget.timeout:g} s time limit")


def _refuse_over(size: int, cap: int, what: str) -> None:
    if size > cap:
        raise LimitExceeded(f"{what} would produce about {size:,} characters; the limit is {cap:,}")


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
            raise LimitExceeded(f"{what} asks for a field width of {len(run)} digits")
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
            raise LimitExceeded(f"{what} with '*' widths is not allowed in templates")
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
            raise LimitExceeded("nested format fields ('{:{}}') are not allowed in templates")
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
        raise LimitExceeded(f"exponent {exponent} is larger than {_MAX_EXPONENT}")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and base.bit_length() * exponent > _MAX_INT_BITS
    ):
        raise LimitExceeded(f"'**' would build an integer of over {_MAX_INT_BITS} bits")


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
        raise LimitExceeded(f"'*' would build an integer of over {_MAX_INT_BITS} bits")


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
            check_deadline()
            yield value

    def __reversed__(self) -> Iterator[int]:
        for value in reversed(self._range):
            check_deadline()
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
        raise LimitExceeded(f"range() of more than {MAX_RANGE:,} items is not allowed")
    return _GuardedRange(rng)


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
_L = TypeVar("_L", bound=jinja2.BaseLoader)


class SandboxEnvironment(ImmutableSandboxedEnvironment, Generic[_L]):
    """The immutable sandbox plus the size and time limits described in the module.

    ``chain_loader`` is the loader it was made with, typed as such (``loader``
    is only a ``BaseLoader | None`` to Jinja).
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _GuardedCodeGenerator

    def __init__(self, loader: _L, *, max_output_chars: int, auto_reload: bool) -> None:
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
        self.chain_loader: _L = loader
        self.globals["range"] = _template_range
        self.globals["lipsum"] = self._lipsum
        self.filters["money"] = money_filter
        self.filters["number"] = number_filter
        self.filters["date"] = date_filter
        self.filters["datetime"] = datetime_filter
        self.filters["css_color"] = css_color_filter
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
        check_deadline()
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
            check_deadline()
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
            raise LimitExceeded(f"tojson indent is limited to {_MAX_TOJSON_INDENT}")
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
            raise LimitExceeded(
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
