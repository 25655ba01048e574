"""What one render may spend, and the arithmetic that keeps it within that.

A render call (:meth:`~tenant_notify.templates.TemplateRenderer.render_email` and
friends) sets a :class:`Budget` in :data:`BUDGET` for the thread it runs in; the
sandbox (:mod:`tenant_notify.templates._sandbox`) charges it as the template
works and raises :class:`LimitExceeded` when the time or the work runs out, which
the renderer turns into :class:`~tenant_notify.errors.TemplateLimitError`.

The idea is that *no single step a template can take is large*: every value a
template builds is measured (by :func:`weight`, which counts what the value would
print as, shared references counted every time they occur) before or as it is
made, and refused past ``max_output_chars``; so every C-level operation Python
does for the template (``str()``, ``==``, ``hash()``, ``json.dumps``) runs on a
bounded input and finishes quickly, and the clock, looked at between steps, is
never far behind. The steps that would be slow on a bounded input anyway
(``sum`` of lists, ``str.strip`` with a long set of characters, ``int()`` of a
huge Decimal, quadratic codecs) are refused or done another way by the sandbox.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Iterable, Iterator, Mapping, MappingView, Sequence
from contextvars import ContextVar
from decimal import Decimal
from itertools import chain
from typing import Any, cast, overload

from jinja2.environment import TemplateModule
from jinja2.sandbox import MAX_RANGE
from jinja2.utils import Namespace
from markupsafe import Markup

#: Containers a template builds (and contexts it is given) may nest this deep.
MAX_DEPTH = 64
#: The work a part may do, as a multiple of ``max_output_chars``.
WORK_FACTOR = 8
#: The work an item of a list or dict costs, in characters: a pointer, and
#: often an object of its own (a character of ``"..."|list``, an int of
#: ``range()|list``), take the memory of about that many characters.
ITEM_COST = 8
#: The wall-clock backstop of a render, as a multiple of its CPU time limit.
WALL_FACTOR = 5
#: Exponents above this are refused (``2 ** 1000``).
MAX_EXPONENT = 100
#: About 4,900 decimal digits: past CPython's default int-to-str limit anyway.
MAX_INT_BITS = 16_384
# A float printed with "%f" can take over 300 digits; every format field may.
_FIELD_ALLOWANCE = 330
# Mapping views print as "dict_items([...])".
_VIEW_OVERHEAD = 16


class LimitExceeded(Exception):
    """Raised inside a render; becomes TemplateLimitError at the boundary."""


class Budget:
    """The time and work one render call may still spend.

    ``work`` counts, for the part being rendered, every character the template
    writes (emitted or captured), every character of a string and every item of
    a container it builds. The renderer resets it for each part
    (:meth:`start_part`).

    ``timeout`` is CPU time of the rendering thread, for the whole call: a render
    that waits for the interpreter lock behind other threads (a busy worker) is
    not charged for the wait. A wall-clock backstop of ``WALL_FACTOR`` times it
    still ends a render that the machine starves for that long. Reading a
    thread's CPU clock is a system call, so it is read only when it could be
    over: a thread cannot spend more CPU time than wall-clock time passes, so
    until ``deadline`` (monotonic) the budget cannot have run out, and at it the
    CPU clock tells how much is really left.
    """

    __slots__ = (
        "cpu_started",
        "deadline",
        "max_work",
        "timeout",
        "wall_deadline",
        "wall_timeout",
        "weights",
        "work",
    )

    def __init__(self, timeout: float, max_work: float, *, remember: bool = True) -> None:
        self.timeout = timeout
        self.wall_timeout = timeout * WALL_FACTOR
        now = time.monotonic()
        self.cpu_started = time.thread_time()
        # The next moment the CPU clock is worth reading.
        self.deadline = now + timeout
        self.wall_deadline = now + self.wall_timeout
        self.max_work = max_work
        self.work = 0
        # id -> (container, weight, height) of the containers weighed so far.
        self.weights: dict[int, tuple[object, int, int]] | None = {} if remember else None

    def start_part(self) -> None:
        self.work = 0

    def spend(self, amount: int) -> None:
        """Charge ``amount`` units of work and look at the clock."""
        self.work += amount
        if self.work > self.max_work:
            raise LimitExceeded(
                f"the template did more than {int(self.max_work):,} characters of work "
                "(text written, captured or built)"
            )
        if time.monotonic() > self.deadline:
            self.expired()

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            self.expired()

    def expired(self) -> None:
        """Past ``deadline``: raise if the CPU time or the backstop ran out, else move it on."""
        now = time.monotonic()
        left = self.timeout - (time.thread_time() - self.cpu_started)
        if left <= 0:
            raise LimitExceeded(
                f"rendering used more than the {self.timeout:g} s time limit (CPU time)"
            )
        if now >= self.wall_deadline:
            raise LimitExceeded(
                f"rendering took longer than {self.wall_timeout:g} s of wall-clock time"
                f" ({WALL_FACTOR} times the {self.timeout:g} s time limit)"
            )
        self.deadline = min(now + left, self.wall_deadline)


#: The budget outside a render call (the environment used on its own): no limits.
UNLIMITED = Budget(float("inf"), float("inf"), remember=False)
#: The budget of the render call running in this thread (or task).
BUDGET: ContextVar[Budget] = ContextVar("tenant_notify_render_budget", default=UNLIMITED)


def check_deadline() -> None:
    """Raise :class:`LimitExceeded` when the current render is over its time."""
    budget = BUDGET.get()
    if time.monotonic() > budget.deadline:
        budget.expired()


def refuse_over(size: int, cap: int, what: str) -> None:
    if size > cap:
        raise LimitExceeded(f"{what} would produce about {size:,} characters; the limit is {cap:,}")


def _decimal_width(value: Decimal) -> int:
    _sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return 4
    # "f" formatting writes out every zero an exponent stands for.
    return len(digits) + abs(exponent) + 2


def weight(value: object, limit: int) -> int:
    """Estimate how many characters ``value`` prints as; stop counting past ``limit``.

    Containers are walked, shared references counted each time (a list holding
    the same list ten times weighs ten times that list), so the weight bounds
    what ``str()``, ``==`` or ``json.dumps`` do with the value. Every element
    counts at least one, so the walk itself never takes more than ``limit``
    steps; and within a render call the weight of every list, tuple and dict is
    remembered, so weighing a container the template built from others costs
    one step per item, not one per item of everything it holds.

    Raises:
        LimitExceeded: Containers nested deeper than :data:`MAX_DEPTH`.
    """
    kind = type(value)
    if kind is str:
        return len(cast(str, value))  # the common case, without the walk
    if kind is int:
        return cast(int, value).bit_length() // 3 + 1
    total, height = _weigh(value, limit, BUDGET.get().weights)
    if height > MAX_DEPTH:
        raise LimitExceeded(f"values may be nested at most {MAX_DEPTH} deep")
    return total


_Memo = dict[int, tuple[object, int, int]]


def _weigh(item: object, limit: int, memo: _Memo | None) -> tuple[int, int]:
    """``(weight, height)`` of ``item``; the weight may stop early past ``limit``."""
    if isinstance(item, str | bytes):
        return len(item) or 1, 0
    if isinstance(item, bool) or item is None:
        return 1, 0
    if isinstance(item, int):
        return item.bit_length() // 3 + 1, 0
    if isinstance(item, float):
        return 24, 0
    if isinstance(item, Decimal):
        return _decimal_width(item), 0
    if isinstance(item, range | GuardedRange):
        return 2 * len(item), 0
    if isinstance(item, TemplateModule):
        # An imported template prints as its whole output.
        return sum(map(len, item._body_stream)), 0
    if isinstance(item, Namespace):
        # Prints as "<Namespace {...}>" with every attribute. Its attributes
        # change as the template sets them, so its weight is never remembered.
        attrs = item._Namespace__attrs
        total, height = _weigh_items(chain.from_iterable(attrs.items()), 12, limit, memo)
        return total, height + 1
    if isinstance(item, list | tuple | Mapping | set | frozenset | MappingView):
        key = id(item)
        if memo is not None:
            hit = memo.get(key)
            if hit is not None and hit[0] is item:
                return hit[1], hit[2]
        if isinstance(item, Mapping):
            total, height = _weigh_items(chain.from_iterable(item.items()), 1, limit, memo)
        else:
            overhead = _VIEW_OVERHEAD if isinstance(item, MappingView) else 1
            total, height = _weigh_items(item, overhead, limit, memo)  # type: ignore[arg-type]
        height += 1
        if height > MAX_DEPTH:
            raise LimitExceeded(f"values may be nested at most {MAX_DEPTH} deep")
        # Only what the sandbox lets no template change, and only whole weights.
        if memo is not None and total <= limit and type(item) in _FROZEN_BY_SANDBOX:
            memo[key] = (item, total, height)  # holds the item, so its id stays its own
        return total, height
    return 1, 0


# The sandbox refuses every method that would change these (append, update, ...).
_FROZEN_BY_SANDBOX = frozenset({list, tuple, dict})


#: Items weighed so far, in any thread; every ``_CLOCK_EVERY`` the clock is read.
#: (Threads may miscount it between them: that only moves when the clock is read.)
_STEPS = [0]
_CLOCK_EVERY = 1024


def _weigh_items(
    items: Iterable[Any], total: int, limit: int, memo: _Memo | None
) -> tuple[int, int]:
    height = 0
    steps = _STEPS
    for entry in items:
        if total > limit:
            break
        steps[0] += 1
        if not steps[0] % _CLOCK_EVERY:
            # A walk of up to ``limit`` steps is a fraction of a second, but not on a
            # starved CPU: it stops at the render's time limit like every other step.
            check_deadline()
        entry_weight, entry_height = _weigh(entry, limit - total, memo)
        total += entry_weight
        height = max(height, entry_height)
    return total, height


def max_weight(values: Sequence[object], cap: int) -> int:
    return max((weight(value, cap) for value in values), default=0)


def size_of_result(value: object, cap: int) -> int:
    """The work a freshly built ``value`` costs; refuses one over ``cap``.

    Strings cost their length; containers :data:`ITEM_COST` per item (what was
    allocated), after their weight (what they print as) is checked against the
    cap. Anything else (numbers, iterators, objects) is free here: what it
    yields or prints is measured when that happens.
    """
    kind = type(value)
    if kind is str or kind is Markup:
        size = len(value)  # type: ignore[arg-type]
        refuse_over(size, cap, "a value")
        return size
    if kind is list or kind is tuple or kind is dict or isinstance(value, list | tuple | Mapping):
        refuse_over(weight(value, cap), cap, "a value")
        return len(value) * ITEM_COST  # type: ignore[arg-type]
    if isinstance(value, str | bytes):
        refuse_over(len(value), cap, "a value")
        return len(value)
    return 0


# --- formatting -----------------------------------------------------------------------

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


def check_percent_format(fmt: str, args: object, cap: int, what: str = "'%' formatting") -> None:
    """Refuse ``fmt % args`` when it would print more than ``cap`` characters."""
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
    refuse_over(
        len(fmt) + widths + fields * (max_weight(values, cap) + _FIELD_ALLOWANCE), cap, what
    )


def check_brace_format(fmt: str, values: Sequence[object], cap: int) -> None:
    """Refuse ``fmt.format(*values)`` when it would print more than ``cap`` characters."""
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
    bound = len(fmt) + widths + fields * (max_weight(values, cap) + _FIELD_ALLOWANCE)
    refuse_over(bound, cap, "str.format")


def replace_bound(target: Any, old: Any, new: Any, count: Any) -> int:
    """How long ``target.replace(old, new, count)`` can get."""
    try:
        hits = target.count(old) if len(old) else len(target) + 1
    except TypeError:
        return 0  # the real call raises the same TypeError
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return int(len(target) + hits * max(len(new) - len(old), 0))


# --- arithmetic -----------------------------------------------------------------------


def check_power(base: Any, exponent: Any) -> None:
    if isinstance(exponent, int | float | Decimal) and abs(exponent) > MAX_EXPONENT:  # type: ignore[operator]
        raise LimitExceeded(f"exponent {exponent} is larger than {MAX_EXPONENT}")
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and base.bit_length() * exponent > MAX_INT_BITS
    ):
        raise LimitExceeded(f"'**' would build an integer of over {MAX_INT_BITS} bits")


def check_multiply(left: Any, right: Any, cap: int) -> None:
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int):
            if times > 0:
                per_copy = weight(seq, cap // times + 1)
                refuse_over(per_copy * times, cap, "'*'")
            return
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > MAX_INT_BITS
    ):
        raise LimitExceeded(f"'*' would build an integer of over {MAX_INT_BITS} bits")


def check_int_conversion(value: Any) -> None:
    """Refuse ``int(value)`` for a Decimal whose integer would be huge.

    ``int(Decimal("1e999999"))`` builds a million-digit integer in one C call.
    """
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() > 4300:
        raise LimitExceeded("the number is too large to convert to an integer")


# --- string methods -------------------------------------------------------------------

_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
_STRIP_METHODS = frozenset({"strip", "lstrip", "rstrip"})
#: ``str.strip(chars)`` looks every character up in ``chars``: keep that short.
MAX_STRIP_CHARS = 256
# Codecs implemented in C in linear time; others (punycode, idna, ...) are
# written in Python, some in quadratic time, and no template needs them.
_SAFE_CODECS = frozenset(
    {
        "utf-8", "utf8", "utf_8", "ascii", "us-ascii", "latin-1", "latin1", "latin_1",
        "iso-8859-1", "iso8859-1", "utf-16", "utf_16", "utf-32", "utf_32", "cp1252",
    }
)  # fmt: skip


def check_strip_chars(chars: Any, what: str) -> None:
    if isinstance(chars, str | bytes) and len(chars) > MAX_STRIP_CHARS:
        raise LimitExceeded(f"{what} takes at most {MAX_STRIP_CHARS} characters to strip")


def guard_str_method(
    name: str, target: str | bytes, args: tuple[Any, ...], kwargs: Mapping[str, Any], cap: int
) -> tuple[Any, ...]:
    """Refuse a string method call whose result would pass ``cap``, or whose
    work would be out of proportion to its input.

    Returns the arguments to call with (``join`` gets its iterable as a list,
    measured once).
    """
    what = f"str.{name}"
    if name in _WIDTH_METHODS and args and isinstance(args[0], int):
        refuse_over(args[0], cap, what)
    elif name in _STRIP_METHODS and args:
        check_strip_chars(args[0], what)
    elif name in {"encode", "decode"}:
        codec = args[0] if args else kwargs.get("encoding", "utf-8")
        if not isinstance(codec, str) or codec.lower() not in _SAFE_CODECS:
            raise LimitExceeded(f"{what} is limited to the UTF and Latin-1 codecs in templates")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        tab: Any = "\t" if isinstance(target, str) else b"\t"
        if isinstance(size, int):
            refuse_over(len(target) + target.count(tab) * size, cap, what)
    elif name == "replace" and len(args) >= 2:
        bound = replace_bound(target, args[0], args[1], args[2] if len(args) > 2 else -1)
        refuse_over(bound * (6 if isinstance(target, Markup) else 1), cap, what)
    elif name == "join" and args:
        items = list(args[0])
        bound = sum(weight(item, cap) for item in items)
        bound += max(len(items) - 1, 0) * len(target)
        refuse_over(bound * (6 if isinstance(target, Markup) else 1), cap, what)
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((weight(v, cap) for v in args[0].values() if v is not None), default=1)
        refuse_over(len(target) * longest, cap, what)
    return args


# --- range ----------------------------------------------------------------------------


class GuardedRange(Sequence[int]):
    """``range()`` for templates: lazy, at most MAX_RANGE items, clock checked per step."""

    __slots__ = ("_range",)

    def __init__(self, rng: range) -> None:
        self._range = rng

    def __iter__(self) -> Iterator[int]:
        budget = BUDGET.get()
        for value in self._range:
            budget.check_deadline()
            yield value

    def __reversed__(self) -> Iterator[int]:
        budget = BUDGET.get()
        for value in reversed(self._range):
            budget.check_deadline()
            yield value

    def __len__(self) -> int:
        return len(self._range)

    def __contains__(self, value: object) -> bool:
        return value in self._range

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> GuardedRange: ...
    def __getitem__(self, index: int | slice) -> int | GuardedRange:
        if isinstance(index, slice):
            return GuardedRange(self._range[index])
        return self._range[index]

    def __repr__(self) -> str:
        return repr(self._range)


def template_range(*args: int) -> GuardedRange:
    """The ``range`` global of templates."""
    rng = range(*args)
    try:
        size = len(rng)
    except OverflowError:
        size = MAX_RANGE + 1
    if size > MAX_RANGE:
        raise LimitExceeded(f"range() of more than {MAX_RANGE:,} items is not allowed")
    return GuardedRange(rng)
