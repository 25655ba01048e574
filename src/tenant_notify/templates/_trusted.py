"""The environments the library's own built-in templates render in: plain Jinja2, no sandbox.

The built-in templates (``templates/builtin/``) are library code, shipped in the
package and reviewed with it, so they need none of the sandbox's call checks and
work counting (:mod:`tenant_notify.templates._sandbox`), which cost about half
of an email's rendering. Everything else a template sees is the same: the
filters, the gettext catalogs, autoescaping of ``.html`` parts, ``StrictUndefined``,
trimmed blocks. What still bounds a built-in render is the renderer's: the output
of a part is counted chunk by chunk against ``max_output_chars``, and the context
was checked against the work a render may do when the notification was built.

Their words are translated when they are compiled, once per catalog: there is one
environment per set of catalog files a locale reads (``de_AT`` then ``de``, say),
and in it ``{% trans %}`` blocks and ``_("...")`` / ``gettext("...")`` calls of a
constant message compile to the translated text, formatted with their variables
exactly as Jinja's newstyle gettext does at render time (``%`` formatting, the
text marked safe in ``.html`` parts so that only the variables are escaped).
Plural and context forms (``ngettext``, ``pgettext``) are still looked up when
the template renders, in the catalog of its ``locale`` variable.

Trust does not leak to other templates:

* this environment loads ``builtin:`` names only, so a built-in template can
  neither include nor extend a tenant's or the application's template (a name
  without a prefix means the built-in one);
* it has a loader of its own, so its compiled templates never stand in for the
  sandbox's in the cache both share: a tenant template that extends
  ``builtin:_layout.html`` gets the layout compiled by the sandbox, and runs
  sandboxed throughout.
"""

from __future__ import annotations

import functools
import gettext as _gettext
import re
import threading
from collections.abc import Callable
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.visitor import NodeTransformer

from ._filters import FILTERS
from ._i18n import DOMAIN, LOCALE_DIR, install_gettext, translations
from ._loader import BUILTIN, ChainLoader, split_key
from ._locale import locale_folders

__all__ = ["PREFIX", "BuiltinEnvironments", "TrustedEnvironment", "is_builtin_name"]

#: How the environment's names of built-in templates start.
PREFIX = f"{BUILTIN}:"

#: What ``getattr(a_dict, name)`` finds before any key: the dict type's attributes.
_DICT_ATTRIBUTES = frozenset(dir(dict))
_MISSING = object()


def is_builtin_name(name: str) -> bool:
    """Whether ``name`` (an environment name from the renderer) is a built-in template."""
    return name.startswith(PREFIX)


class _BuiltinLoader(jinja2.BaseLoader):
    """The chain loader, for ``builtin:`` names only."""

    def __init__(self, loader: ChainLoader) -> None:
        self.loader = loader

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        key, name = split_key(template)
        if key is not None or not is_builtin_name(name):
            raise jinja2.TemplateNotFound(template)
        return self.loader.get_source(environment, name)


class _Translate(NodeTransformer):
    """``gettext("msg", name=v)`` of a constant ``msg`` -> ``"translated" % {"name": v}``.

    Where such a call is printed as it is (``{{ _("...", name=v) }}``, a
    ``{% trans %}`` block) and the translation's only placeholders are ``%(name)s``
    (and ``%%``), each naming one of the call's variables once, the words are
    printed as template data and the variables as ``{{ v }}`` is printed: the same
    text (Markup's ``%`` escapes each variable in an HTML part and only those;
    ``{{ v }}`` does), without a Markup and an escaping helper per variable and
    render (``Markup.__mod__``: a twentieth of an email's rendering).
    """

    def __init__(self, catalog: _gettext.NullTranslations) -> None:
        self.gettext = catalog.gettext

    def visit_Call(self, call: nodes.Call) -> nodes.Node:
        node = self.generic_visit(call)
        if not (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Name)
            and node.node.name in ("_", "gettext")
            and len(node.args) == 1
            and isinstance(node.args[0], nodes.Const)
            and isinstance(node.args[0].value, str)
            and node.dyn_args is None
            and node.dyn_kwargs is None
        ):
            return node
        lineno = node.lineno
        text = nodes.MarkSafeIfAutoescape(
            nodes.Const(self.gettext(node.args[0].value), lineno=lineno), lineno=lineno
        )
        pairs = [
            nodes.Pair(nodes.Const(kw.key, lineno=lineno), kw.value, lineno=lineno)
            for kw in node.kwargs
        ]
        return nodes.Mod(text, nodes.Dict(pairs, lineno=lineno), lineno=lineno)

    def visit_Output(self, output: nodes.Output) -> nodes.Node:
        node = self.generic_visit(output)
        assert isinstance(node, nodes.Output)
        printed: list[nodes.Expr] = []
        for child in node.nodes:
            pieces = _printed_pieces(child)
            printed.extend(pieces if pieces is not None else [child])
        node.nodes = printed
        return node


#: A ``%`` placeholder: ``%(name)s``, ``%%``, or anything else (left to ``%``).
_PLACEHOLDER = re.compile(
    r"%(?:\((?P<name>[^()]*)\)(?P<spec>[^a-zA-Z%]*[a-zA-Z%])|%|(?P<other>.?))"
)


def _printed_pieces(node: nodes.Expr) -> list[nodes.Expr] | None:
    """A translated call (as :class:`_Translate` compiles it) printed as template data
    and its variables, or None when its text needs ``%`` itself."""
    if not (
        isinstance(node, nodes.Mod)
        and isinstance(node.left, nodes.MarkSafeIfAutoescape)
        and isinstance(node.left.expr, nodes.Const)
        and isinstance(node.left.expr.value, str)
        and isinstance(node.right, nodes.Dict)
    ):
        return None
    variables: dict[str, nodes.Expr] = {}
    for pair in node.right.items:
        if not (isinstance(pair.key, nodes.Const) and isinstance(pair.key.value, str)):
            return None
        variables[pair.key.value] = pair.value
    text: str = node.left.expr.value
    lineno = node.lineno
    pieces: list[nodes.Expr] = []
    used: list[str] = []
    start = 0
    for match in _PLACEHOLDER.finditer(text):
        literal = text[start : match.start()]
        start = match.end()
        name = match.group("name")
        if name is None and match.group("other") is None:  # %%
            literal += "%"
        if literal:
            pieces.append(nodes.TemplateData(literal, lineno=lineno))
        if name is None and match.group("other") is None:
            continue
        if name is None or match.group("spec") != "s" or name not in variables or name in used:
            return None  # a format %-formatting must do (or a KeyError to raise)
        used.append(name)
        pieces.append(variables[name])
    if sorted(used) != sorted(variables):
        return None  # a variable the text does not print is still evaluated by ``%``
    if start < len(text):
        pieces.append(nodes.TemplateData(text[start:], lineno=lineno))
    # Adjacent template data are joined, as the parser would have them.
    merged: list[nodes.Expr] = []
    for piece in pieces:
        if (
            merged
            and isinstance(piece, nodes.TemplateData)
            and isinstance(merged[-1], nodes.TemplateData)
        ):
            merged[-1] = nodes.TemplateData(merged[-1].data + piece.data, lineno=lineno)
        else:
            merged.append(piece)
    return merged


class TrustedEnvironment(jinja2.Environment):
    """Plain Jinja2 with the sandbox's settings, filters and catalogs, for built-in templates,
    with the words of ``catalog`` compiled in.

    ``cache`` is meant to be the sandbox's (one bound for every compiled template);
    this environment's keys never meet the sandbox's or another catalog's, as its
    loader is its own.
    """

    def __init__(
        self,
        loader: ChainLoader,
        *,
        catalog: _gettext.NullTranslations,
        autoescape: Callable[[str | None], bool],
        auto_reload: bool,
        cache: Any,
    ) -> None:
        super().__init__(
            loader=_BuiltinLoader(loader),
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            auto_reload=auto_reload,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.cache = cache
        self.filters.update(FILTERS)
        install_gettext(self)
        self._translate = _Translate(catalog)
        # What every render sees besides its variables, as one plain dict: Jinja
        # would copy its chain of globals into each render's context otherwise.
        self._globals = dict(self.globals)
        # What Template.new_context gives each context as its globals' names (for
        # {% import %}), worked out once: Jinja lists the ChainMap for every render.
        self._globals_keys = frozenset(self._globals)
        # Without auto_reload, the compiled parts the renderer asks for by name, held
        # here: get_template goes through the shared cache (a lock, its bookkeeping)
        # each render. As many as the package has built-in templates.
        self._held: dict[str, jinja2.Template] = {}

    def render(self, name: str, variables: dict[str, Any]) -> str:
        """Render template ``name`` with ``variables`` as ``Template.render`` does."""
        template = self._held.get(name)
        if template is None:
            template = self.get_template(name)
            if not self.auto_reload:
                self._held[name] = template
        # template.new_context({**globals, **variables}, shared=True), less its
        # walk over the ChainMap of globals (a template loaded here has none of
        # its own, so the names are the environment's).
        context = self.context_class(
            self, {**self._globals, **variables}, template.name, template.blocks
        )
        context.globals_keys = self._globals_keys  # type: ignore[assignment]
        try:
            return self.concat(template.root_render_func(context))
        except Exception:
            self.handle_exception()

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``obj.attribute`` as Jinja's :meth:`jinja2.Environment.getattr` has it, with
        a plain dict's key found without the AttributeError (and, for a key it does
        not have, the KeyError) Jinja raises and catches first: the templates read
        ``tenant.name`` and ``branding.*`` a dozen times a message."""
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            value = obj.get(attribute, _MISSING)
            if value is _MISSING:
                return self.undefined(obj=obj, name=attribute)
            return value
        return super().getattr(obj, attribute)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        return self._translate.visit(tree)  # type: ignore[no-any-return]

    def join_path(self, template: str, parent: str) -> str:
        # A built-in template reaches built-in templates only.
        return template if is_builtin_name(template) else PREFIX + template


@functools.lru_cache(maxsize=256)
def catalog_files(locale: str | None) -> tuple[str, ...]:
    """The catalog files :func:`~._i18n.translations` reads for ``locale``, in order."""
    languages = list(locale_folders(locale)) if isinstance(locale, str) else []
    return tuple(_gettext.find(DOMAIN, LOCALE_DIR, languages=languages, all=True))


class BuiltinEnvironments:
    """One :class:`TrustedEnvironment` per set of catalogs, made when first needed."""

    def __init__(
        self,
        loader: ChainLoader,
        *,
        autoescape: Callable[[str | None], bool],
        auto_reload: bool,
        cache: Any,
    ) -> None:
        self._make = functools.partial(
            TrustedEnvironment, loader, autoescape=autoescape, auto_reload=auto_reload, cache=cache
        )
        self._envs: dict[tuple[str, ...], TrustedEnvironment] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop the compiled templates each environment holds (with the shared cache's)."""
        with self._lock:
            for env in self._envs.values():
                env._held.clear()

    def get(self, locale: object) -> TrustedEnvironment:
        """The environment for a render whose ``locale`` variable is ``locale``."""
        name = locale if isinstance(locale, str) else None
        key = catalog_files(name)
        env = self._envs.get(key)
        if env is None:
            with self._lock:
                env = self._envs.get(key)
                if env is None:
                    # As many as there are catalog combinations shipped: a handful.
                    env = self._envs[key] = self._make(catalog=translations(name))
        return env
