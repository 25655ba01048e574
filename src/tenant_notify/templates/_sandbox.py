"""The hardened Jinja2 sandbox that tenant templates run in.

This module holds the environment; what one render may spend and the arithmetic
of the limits are in :mod:`tenant_notify.templates._limits`. Finding templates
and turning failures into :class:`~tenant_notify.errors.TemplateError` is done by
:mod:`tenant_notify.templates._renderer`, which sets the budget of each render
call and catches :class:`~tenant_notify.templates._limits.LimitExceeded`.

Untrusted templates
-------------------
Tenant templates are untrusted. They run in Jinja's
``ImmutableSandboxedEnvironment`` (no access to ``_``-prefixed attributes or
Python internals, no mutation of lists and dicts); a violation raises
:class:`~tenant_notify.errors.TemplateSecurityError`. On top of the sandbox every
render is bounded, whatever the template does:

* **Output**: what a part emits is counted chunk by chunk and stops at
  ``max_output_chars``.
* **Work**: every character a template writes, emitted or captured (macros,
  ``caller()``, ``{% set %}`` and ``{% filter %}`` blocks, ``self.block()`` and
  ``super()``, the body of an imported template), every character of a string
  and every item of a list or dict it builds (with a filter, a method, an
  operator, ``~`` or a literal) counts towards ``8 x max_output_chars`` per part.
  Memory is bounded by that.
* **Values**: no value a template builds may print as more than
  ``max_output_chars`` characters, shared references counted each time (a list
  holding one list ten times weighs ten times as much), nor nest deeper than 64.
  So every single operation Python does on a value (``str()``, ``|tojson``,
  ``==``, ``hash()``) works on a bounded input. Values that would be too large
  are refused *before* they are built where the size can be known: ``*``,
  ``**``, ``+``, ``%``, ``str.format``, ``~``, ``{{ ... }}``, the filters
  ``replace``, ``join``, ``center``, ``indent``, ``wordwrap``, ``format``,
  ``batch``, ``slice``, ``tojson`` and ``urlize``, the string methods ``center``,
  ``ljust``, ``rjust``, ``zfill``, ``expandtabs``, ``replace``, ``join`` and
  ``translate``, and ``lipsum()``; the results of every other filter and call
  are measured as they come back.
* **Operations slow on a bounded input** are refused or done another way:
  ``sum`` of lists (quadratic in C) is done in linear time; ``strip``/``trim``
  take at most 256 characters to strip; ``encode``/``decode`` only the UTF and
  Latin-1 codecs; ``int`` of a Decimal with over 4,300 digits is refused;
  ``wordwrap`` and ``pprint`` (pure Python) take at most ``max_output_chars / 4``.
* **Time**: the clock is checked whenever work is counted, at every call a
  template makes (macros and ``caller()`` included), every iteration of every
  loop and every step of ``range()`` (which keeps the sandbox's limit of 100,000
  items). As no step is large, a render stops soon after it has used
  ``render_timeout`` of its thread's CPU time (time spent waiting for the
  interpreter lock is not charged), or at the latest after ``WALL_FACTOR`` (5)
  times that in wall-clock time.
* **Recursion** (a macro or an include calling itself) ends at Python's
  recursion limit, as a :class:`~tenant_notify.errors.TemplateLimitError`.
* **No state between renders**: an imported template is rendered afresh for
  each render (Jinja keeps it otherwise), so a ``namespace()`` or ``cycler()``
  it holds cannot carry one recipient's data into the next email.
* Template sources larger than 1 MiB are refused by the loader
  (:mod:`tenant_notify.templates._loader`).

What the limits do not cover:

* Compiling a template is not timed (sources are capped at 1 MiB instead), and
  compiled templates are cached, so this cost is paid once per template version.
* Functions and objects the *host* puts in the context are trusted: their cost
  and output are theirs.
* The limits are cooperative: they raise inside the rendering thread, between
  steps of the template, they do not preempt it.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import TemplateModule
from jinja2.filters import make_attrgetter
from jinja2.lexer import Token, TokenStream
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from markupsafe import escape

from ._cache import LRUCache
from ._filters import FILTERS
from ._i18n import install_gettext
from ._limits import (
    BUDGET,
    LimitExceeded,
    check_brace_format,
    check_deadline,
    check_int_conversion,
    check_multiply,
    check_percent_format,
    check_power,
    check_strip_chars,
    guard_str_method,
    refuse_over,
    replace_bound,
    size_of_result,
    template_range,
    weight,
)
from ._loader import ChainLoader

#: Most tokens one template file may hold (the largest built-in one has 250).
MAX_TOKENS = 5_000
#: Most characters of Python one template file may compile to (the largest
#: built-in one compiles to about 20,000).
MAX_CODE_CHARS = 131_072
_MAX_TOJSON_INDENT = 16
_MAX_URLIZE_EXTRA = 256

# Filters whose result is their input, a part of it, a number or a short string
# of their own: nothing to measure.
_UNMEASURED_FILTERS = frozenset(
    {
        "abs", "attr", "count", "css_color", "d", "default", "first", "float", "last",
        "length", "max", "min", "money", "random", "round",
    }
)  # fmt: skip


# --- compiled code ----------------------------------------------------------------------


def _guard_node(name: str, *args: nodes.Expr, lineno: int) -> nodes.Expr:
    return nodes.Call(
        nodes.EnvironmentAttribute(name, lineno=lineno), list(args), [], None, None, lineno=lineno
    )


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles templates with calls into the environment's limits.

    Loops iterate through ``tn_iterate`` (the clock), every capture buffer
    (macros, call, set and filter blocks) is a :class:`CountingBuffer`, ``~``
    goes through ``tn_concat`` and list, tuple and dict literals through
    ``tn_container``.
    """

    def buffer(self, frame: Frame) -> None:
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.tn_buffer()")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        guarded = copy.copy(node)
        guarded.iter = _guard_node("tn_iterate", node.iter, lineno=node.lineno)  # type: ignore[arg-type]
        super().visit_For(guarded, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.tn_concat({join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _container(self, visit: Callable[[Any, Frame], None], node: Any, frame: Frame) -> None:
        self.write("environment.tn_container(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self._container(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self._container(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx == "load":
            self._container(super().visit_Tuple, node, frame)
        else:  # an assignment target: {% set a, b = ... %}
            super().visit_Tuple(node, frame)


class CountingBuffer(list[str]):
    """A capture buffer that charges the render's budget for what is written to it."""

    __slots__ = ("_spend",)

    def __init__(self) -> None:
        super().__init__()
        self._spend = BUDGET.get().spend

    def append(self, chunk: str) -> None:
        self._spend(len(chunk))
        super().append(chunk)

    def extend(self, chunks: Iterable[str]) -> None:
        chunks = tuple(chunks)
        self._spend(sum(map(len, chunks)))
        super().extend(chunks)


def _counted(stream: Iterable[str]) -> CountingBuffer:
    buffer = CountingBuffer()
    for chunk in stream:
        buffer.append(chunk)
    return buffer


class SandboxTemplate(jinja2.Template):
    """A template whose imports are rendered afresh, and counted, every time.

    Jinja keeps the module of a template imported without context for the life
    of the compiled template, so a ``namespace()`` set up in it would carry data
    from one render (one recipient) into the next. The module's body is
    collected through a :class:`CountingBuffer`, so it counts as work.
    """

    def make_module(
        self,
        vars: dict[str, Any] | None = None,
        shared: bool = False,
        locals: Mapping[str, Any] | None = None,
    ) -> TemplateModule:
        context = self.new_context(vars, shared, locals)
        return TemplateModule(self, context, _counted(self.root_render_func(context)))

    def _get_default_module(self, ctx: Context | None = None) -> TemplateModule:
        if ctx is not None:
            keys = ctx.globals_keys - self.globals.keys()
            if keys:
                return self.make_module({key: ctx.parent[key] for key in keys})
        return self.make_module()


_FilterCheck = Callable[..., Any]


class SandboxEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus the limits described in the module.

    ``chain_loader`` is the loader it was made with, typed as such (``loader``
    is only a ``BaseLoader | None`` to Jinja); names of included, extended and
    imported templates go through its :meth:`~ChainLoader.resolve`.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _GuardedCodeGenerator
    template_class = SandboxTemplate

    def __init__(
        self,
        loader: ChainLoader,
        *,
        max_output_chars: int,
        auto_reload: bool,
        cache_size: int = 400,
    ) -> None:
        self.max_output_chars = max_output_chars
        super().__init__(
            loader=loader,
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            auto_reload=auto_reload,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=self.tn_check_size,
        )
        self.chain_loader = loader
        # Jinja only calls get(), [key] = value and clear() on its cache.
        self.cache: LRUCache[Any, jinja2.Template] = LRUCache(cache_size)  # type: ignore[assignment]
        self.globals["range"] = template_range
        self.globals["lipsum"] = self._lipsum
        self.filters.update(FILTERS)
        install_gettext(self)
        self.filters["join"] = self._guarded_join(self.filters["join"])
        self.filters["sum"] = self._linear_sum
        self.filters["wordwrap"] = self._guarded_wordwrap(self.filters["wordwrap"])
        checks: dict[str, _FilterCheck] = {
            "replace": self._check_replace_filter,
            "center": self._check_center_filter,
            "indent": self._check_indent_filter,
            "format": self._check_format_filter,
            "batch": self._check_batch_filter,
            "slice": self._check_batch_filter,
            "tojson": self._check_tojson_filter,
            "urlize": self._check_urlize_filter,
            "trim": self._check_trim_filter,
            "int": self._check_int_filter,
            "pprint": self._check_pprint_filter,
        }
        for name, check in checks.items():
            self.filters[name] = _guarded_filter(self.filters[name], check)
        _measure_filters(self.filters, self.max_output_chars)

    def _tokenize(
        self, source: str, name: str | None, filename: str | None = None, state: str | None = None
    ) -> TokenStream:
        # Compiling is timed (the parser pulls tokens one by one) and bounded:
        # what the parser, the code generator and Python's compile() take grows
        # with the number of tokens, by up to a millisecond for a hundred.
        stream = super()._tokenize(source, name, filename, state)
        return TokenStream(_counted_tokens(stream), name, filename)

    def _generate(
        self,
        source: nodes.Template,
        name: str | None,
        filename: str | None,
        defer_init: bool = False,
    ) -> str:
        # Python's compile() of the generated code is one C call: bound its input.
        code = super()._generate(source, name, filename, defer_init)
        if len(code) > MAX_CODE_CHARS:
            raise LimitExceeded(
                f"the template compiles to {len(code):,} characters of Python; the limit is "
                f"{MAX_CODE_CHARS:,} (fewer macros, blocks or expressions)"
            )
        check_deadline()
        return code

    def join_path(self, template: str, parent: str) -> str:
        # {% include %}, {% extends %} and {% import %} names: in the current chain.
        return self.chain_loader.resolve(template)

    # -- hooks Jinja calls from compiled templates

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = BUDGET.get()
        budget.check_deadline()
        target = getattr(obj, "__self__", None)
        if isinstance(target, str | bytes):
            args = guard_str_method(
                getattr(obj, "__name__", ""), target, args, kwargs, self.max_output_chars
            )
        result = super().call(context, obj, *args, **kwargs)
        size = size_of_result(result, self.max_output_chars)
        if type(obj) is not Macro:  # a macro's output was counted as it was written
            budget.spend(size)
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        cap = self.max_output_chars
        if operator == "*":
            check_multiply(left, right, cap)
        elif operator == "**":
            check_power(left, right)
        elif operator == "+":
            if isinstance(left, str | bytes | list | tuple) and isinstance(
                right, str | bytes | list | tuple
            ):
                refuse_over(weight(left, cap) + weight(right, cap), cap, "'+'")
        elif operator == "%" and isinstance(left, str):
            check_percent_format(left, right, cap)
        result = super().call_binop(context, operator, left, right)
        size = size_of_result(result, cap)
        if size:
            BUDGET.get().spend(size)
        return result

    def getitem(self, obj: Any, argument: str | Any) -> Any:
        result = super().getitem(obj, argument)
        if type(argument) is slice:
            BUDGET.get().spend(size_of_result(result, self.max_output_chars))
        return result

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
            check_brace_format(fmt, values, cap)
            return sandboxed(*args, **kwargs)

        return functools.update_wrapper(guarded, wrapper)

    def concat(self, chunks: Iterable[str]) -> str:
        """Join captured output; what was not captured in a CountingBuffer
        (a block called as ``self.name()`` or ``super()``) is counted here."""
        if type(chunks) is not CountingBuffer:
            chunks = _counted(chunks)
        return "".join(chunks)

    def tn_buffer(self) -> CountingBuffer:
        return CountingBuffer()

    def tn_iterate(self, iterable: Any) -> Iterator[Any]:
        budget = BUDGET.get()
        for item in iterable:
            budget.check_deadline()
            yield item

    def tn_concat(self, join: Callable[[Iterable[Any]], str], values: tuple[Any, ...]) -> str:
        cap = self.max_output_chars
        refuse_over(sum(weight(value, cap) for value in values), cap, "'~'")
        result = join(values)
        BUDGET.get().spend(len(result))
        return result

    def tn_container(self, value: Any) -> Any:
        BUDGET.get().spend(size_of_result(value, self.max_output_chars))
        return value

    def tn_check_size(self, value: Any) -> Any:
        # finalize: every {{ ... }} value, before it is converted to text.
        cap = self.max_output_chars
        refuse_over(len(value) if type(value) is str else weight(value, cap), cap, "a value")
        return value

    def _lipsum(self, n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        # About 12 characters per word, with markup.
        refuse_over(int(n) * int(max) * 12, self.max_output_chars, "lipsum()")
        return generate_lorem_ipsum(n=n, html=html, min=min, max=max)

    # -- filters done another way

    def _guarded_join(self, original: Callable[..., str]) -> Callable[..., str]:
        cap = self.max_output_chars

        @jinja2.pass_eval_context
        def join(eval_ctx: EvalContext, value: Any, d: Any = "", attribute: Any = None) -> str:
            items = list(value)
            if attribute is not None:
                getter = make_attrgetter(self, attribute)
                items = [getter(item) for item in items]
            bound = sum(weight(item, cap) for item in items)
            bound += max(len(items) - 1, 0) * len(str(d))
            refuse_over(bound * (6 if eval_ctx.autoescape else 1), cap, "the join filter")
            return original(eval_ctx, items, d)

        return join

    def _linear_sum(self, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        # sum() of lists copies the running total at every step: quadratic, in C.
        items = list(iterable)
        if attribute is not None:
            getter = make_attrgetter(self, attribute)
            items = [getter(item) for item in items]
        if isinstance(start, list | tuple) and all(isinstance(x, list | tuple) for x in items):
            cap = self.max_output_chars
            refuse_over(weight(start, cap) + sum(weight(x, cap) for x in items), cap, "sum")
            return type(start)(itertools.chain(start, *items))
        return sum(items, start)

    def _guarded_wordwrap(self, original: Callable[..., str]) -> Callable[..., str]:
        # textwrap is pure Python and slow on long lines; the filter wraps each
        # line on its own, so wrap line by line with the clock checked between.
        limit = self.max_output_chars // 4

        @jinja2.pass_environment
        def wordwrap(
            environment: jinja2.Environment,
            s: str,
            width: int = 79,
            break_long_words: bool = True,
            wrapstring: str | None = None,
            break_on_hyphens: bool = True,
        ) -> str:
            text = str(s)
            joint = wrapstring if wrapstring is not None else environment.newline_sequence
            per_line = width if isinstance(width, int) and width > 0 else 1
            lines = 2 * len(text) // per_line + text.count("\n") + 2
            refuse_over(
                len(text) + lines * len(joint), self.max_output_chars, "the wordwrap filter"
            )
            wrapped = []
            for line in text.splitlines():
                check_deadline()
                refuse_over(len(line), limit, "the wordwrap filter (one line)")
                wrapped.append(
                    original(environment, line, width, break_long_words, joint, break_on_hyphens)
                )
            return joint.join(wrapped)

        return wordwrap

    # -- checks for filters that can make much more text than they are given

    def _check_replace_filter(
        self, autoescape: bool, s: Any, old: Any, new: Any, count: Any = None
    ) -> Any:
        text, old_s, new_s = (str(escape(x)) if autoescape else str(x) for x in (s, old, new))
        bound = replace_bound(text, old_s, new_s, count)
        refuse_over(bound, self.max_output_chars, "the replace filter")
        return s

    def _check_center_filter(self, autoescape: bool, value: Any, width: Any = 80) -> Any:
        if isinstance(width, int):
            refuse_over(width, self.max_output_chars, "the center filter")
        return value

    def _check_indent_filter(
        self, autoescape: bool, s: Any, width: Any = 4, first: Any = False, blank: Any = False
    ) -> Any:
        text = str(s)
        step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        bound = len(text) + (text.count("\n") + 1) * step
        refuse_over(bound, self.max_output_chars, "the indent filter")
        return s

    def _check_format_filter(self, autoescape: bool, value: Any, *args: Any, **kwargs: Any) -> Any:
        check_percent_format(str(value), kwargs or args, self.max_output_chars, "the format filter")
        return value

    def _check_batch_filter(
        self, autoescape: bool, value: Any, count: Any, fill_with: Any = None
    ) -> Any:
        cap = self.max_output_chars
        if isinstance(count, int):
            refuse_over(count, cap, "the batch/slice filter")
            if fill_with is not None:
                refuse_over(count * weight(fill_with, cap), cap, "the batch/slice filter")
        return value

    def _check_tojson_filter(self, autoescape: bool, value: Any, indent: Any = None) -> Any:
        step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
        if step > _MAX_TOJSON_INDENT:
            raise LimitExceeded(f"tojson indent is limited to {_MAX_TOJSON_INDENT}")
        if step:
            # Every item goes on a line of its own, indented by its depth.
            cap = self.max_output_chars
            refuse_over(_indented_size(value, step, cap), cap, "the tojson filter")
        return value

    def _check_pprint_filter(self, autoescape: bool, value: Any) -> Any:
        # pprint is pure Python, and indents nested values.
        refuse_over(weight(value, self.max_output_chars), self.max_output_chars // 4, "pprint")
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
        extra = sum(weight(x, _MAX_URLIZE_EXTRA) for x in (target, rel, extra_schemes) if x)
        if extra > _MAX_URLIZE_EXTRA:
            raise LimitExceeded(
                f"urlize target, rel and extra_schemes are limited to "
                f"{_MAX_URLIZE_EXTRA} characters"
            )
        return value

    def _check_trim_filter(self, autoescape: bool, value: Any, chars: Any = None) -> Any:
        check_strip_chars(chars, "the trim filter")
        return value

    def _check_int_filter(
        self, autoescape: bool, value: Any, default: Any = 0, base: Any = 10
    ) -> Any:
        check_int_conversion(value)
        return value


def _indented_size(value: Any, step: int, cap: int) -> int:
    """About how long ``json.dumps(value, indent=step)`` is, counting up to ``cap``."""
    total = weight(value, cap)
    level: list[Any] = [value]
    depth = 0
    while level and total <= cap:
        below: list[Any] = []
        for item in level:
            if isinstance(item, Mapping):
                below.extend(item.values())
            elif isinstance(item, list | tuple):
                below.extend(item)
            else:
                continue
            total += (len(item) + 1) * (depth + 1) * step
            if total > cap:
                break
        depth += 1
        level = below
    return total


def _counted_tokens(stream: TokenStream) -> Iterator[Token]:
    budget = BUDGET.get()
    for count, token in enumerate(stream, 1):
        if count > MAX_TOKENS:
            raise LimitExceeded(
                f"the template has more than {MAX_TOKENS:,} tokens (tags, expressions, text runs)"
            )
        budget.check_deadline()
        yield token


def autoescape(name: str | None) -> bool:
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


def _measure_filters(filters: MutableMapping[str, Callable[..., Any]], cap: int) -> None:
    """Make every filter that can build a new value charge the budget for it.

    Filters are also called by other filters (``map``, ``select``), which reach
    them through this table, so those calls are measured too.
    """
    for name, original in list(filters.items()):
        if name in _UNMEASURED_FILTERS:
            continue
        filters[name] = _measured(original, cap)


def _measured(original: Callable[..., Any], cap: int) -> Callable[..., Any]:
    @functools.wraps(original)
    def measured(*args: Any, **kwargs: Any) -> Any:
        budget = BUDGET.get()
        budget.check_deadline()
        result = original(*args, **kwargs)
        budget.spend(size_of_result(result, cap))
        return result

    return measured
