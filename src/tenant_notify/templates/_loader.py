"""Where templates come from: safe names, template sources and the chain loader.

A *source* is a folder of templates with a label (``tenant``, ``app`` or
``builtin``); a *chain* is the sources of one tenant, in lookup order. One
environment serves every tenant (so the built-in and application templates are
compiled once, not once per tenant); its names carry the chain they belong to.
:class:`ChainLoader` loads ``label:path`` names from that one source and plain
names from the first source of the chain that has them; it never follows a
symlink out of a source, and refuses sources over :data:`MAX_SOURCE_BYTES`.
"""

from __future__ import annotations

import itertools
import re
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import NamedTuple

import jinja2
from jinja2.loaders import split_template_path

from ..errors import ConfigurationError
from ._cache import LRUCache
from ._limits import LimitExceeded

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
MAX_NAME_LEN = 100

#: Source labels, as names may be prefixed with them (``"builtin:_layout.html"``).
TENANT, APP, BUILTIN = "tenant", "app", "builtin"
LABELS = frozenset({TENANT, APP, BUILTIN})
#: The templates shipped with the library.
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
#: Template files larger than this are refused.
MAX_SOURCE_BYTES = 1 << 20

# --- names ----------------------------------------------------------------------------


def is_safe_name(name: object) -> bool:
    """A kind or part name: lower-case letters, digits, ``_``, ``.``, ``-``; no ``..``."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LEN
        and _NAME_RE.fullmatch(name) is not None
        and ".." not in name
    )


# --- loader ---------------------------------------------------------------------------


class Source(NamedTuple):
    """A labelled template folder (``root`` as given, ``resolved_root`` with symlinks resolved)."""

    label: str
    root: Path
    resolved_root: Path


def make_source(label: str, root: Path) -> Source:
    """A :class:`Source` for ``root``, resolved once."""
    return Source(label, root, root.resolve())


def find(source: Source, pieces: Sequence[str]) -> Path | None:
    """The file ``pieces`` names in ``source``, or None (missing, or a symlink out)."""
    path = source.root.joinpath(*pieces)
    if not path.is_file():
        return None
    # A symlink out of the source directory would let a template read any file.
    if not path.resolve().is_relative_to(source.resolved_root):
        return None
    return path


class Chain:
    """The sources one tenant's templates are looked up in, in order.

    ``key`` is an opaque id, unique within one loader, that prefixes the names of
    this chain's *tenant* templates (``"7|tenant:welcome/body.txt"``) in the
    environment all tenants share. Application and built-in templates have the
    same name (``"app:..."``, ``"builtin:..."``) in every chain, so they are
    compiled once for all tenants.
    """

    __slots__ = ("__weakref__", "key", "sources")

    def __init__(self, key: str, sources: Sequence[Source]) -> None:
        self.key = key
        self.sources = tuple(sources)

    def name(self, source: Source, relpath: str) -> str:
        """The environment's name for ``relpath`` in ``source``."""
        if source.label == TENANT:
            return f"{self.key}{SEPARATOR}{TENANT}:{relpath}"
        return f"{source.label}:{relpath}"

    def where(self, filename: str) -> tuple[str, str] | None:
        """``(relpath, label)`` of a template file of this chain, for error messages."""
        path = Path(filename)
        for source in self.sources:
            if path.is_relative_to(source.root):
                return path.relative_to(source.root).as_posix(), source.label
        return None


#: Between a chain's key and the template name in the environment's names.
SEPARATOR = "|"
#: The chain of the render running in this thread (or task).
CURRENT_CHAIN: ContextVar[Chain | None] = ContextVar("tenant_notify_chain", default=None)
# Without auto_reload nothing on disk is expected to change; with it, where a
# name was found is trusted this long (a file a tenant adds shows up after it).
_RESOLVE_TTL = 2.0


class ChainLoader(jinja2.BaseLoader):
    """Loads the environment's names: ``app:path`` and ``builtin:path`` from
    those sources, ``<key>|tenant:path`` from the tenant source of chain ``key``.

    :meth:`resolve` (the environment's ``join_path``) turns the names templates
    write (``"_layout.html"``, ``"tenant:x.html"``) into those, in the chain of
    the render under way (:data:`CURRENT_CHAIN`). Chains are held by the
    renderer (a bounded number); the loader keeps them only while someone does,
    so a chain dropped from the renderer's cache in the middle of a render
    still serves it.

    Args:
        shared: The application and built-in sources, the same for every chain.
        auto_reload: Whether files may change while the process runs.
        cache_size: How many (chain, name) answers :meth:`resolve` keeps.
    """

    def __init__(self, shared: Sequence[Source], *, auto_reload: bool, cache_size: int) -> None:
        self.shared = {source.label: source for source in shared}
        self.auto_reload = auto_reload
        self._chains: weakref.WeakValueDictionary[str, Chain] = weakref.WeakValueDictionary()
        self._next_key = itertools.count(1)
        self._resolved: LRUCache[tuple[str, str], tuple[str, float | None]] = LRUCache(cache_size)

    def new_chain(self, tenant: Source | None) -> Chain:
        """A chain of ``tenant`` (if any), then the shared sources."""
        sources = ([tenant] if tenant is not None else []) + list(self.shared.values())
        chain = Chain(str(next(self._next_key)), sources)
        self._chains[chain.key] = chain
        return chain

    def resolve(self, name: str) -> str:
        """The environment's name for what a template of the current chain calls ``name``."""
        chain = CURRENT_CHAIN.get()
        if chain is None:
            return name
        label, sep, _ = name.partition(":")
        if sep and label in LABELS:
            return f"{chain.key}{SEPARATOR}{name}" if label == TENANT else name
        key = (chain.key, name)
        cached = self._resolved.get(key)
        if cached is not None and (cached[1] is None or time.monotonic() < cached[1]):
            return cached[0]
        pieces = split_template_path(name)
        found = next((source for source in chain.sources if find(source, pieces)), None)
        # Not found: a name only this chain uses, which the loader will not find.
        resolved = chain.name(found, name) if found else f"{chain.key}{SEPARATOR}{name}"
        expires = time.monotonic() + _RESOLVE_TTL if self.auto_reload else None
        self._resolved[key] = (resolved, expires)
        return resolved

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        key, name = split_key(template)
        label, _, relpath = name.partition(":")
        source: Source | None = None
        if key is None:
            if label != TENANT:
                source = self.shared.get(label)
        elif label == TENANT:
            chain = self._chains.get(key)
            if chain is not None and chain.sources[0].label == TENANT:
                source = chain.sources[0]
        pieces = split_template_path(relpath)
        path = find(source, pieces) if source is not None else None
        if path is None:
            raise jinja2.TemplateNotFound(template)
        stat = path.stat()
        if stat.st_size > MAX_SOURCE_BYTES:
            raise LimitExceeded(
                f"the template source is {stat.st_size:,} bytes; the limit is {MAX_SOURCE_BYTES:,}"
            )
        text = path.read_text(encoding="utf-8")
        return text, str(path), _uptodate(path, stat.st_mtime_ns)


def split_key(name: str) -> tuple[str | None, str]:
    """``"7|tenant:x"`` -> ``("7", "tenant:x")``; a name without a chain key -> ``(None, name)``."""
    key, sep, rest = name.partition(SEPARATOR)
    return (key, rest) if sep and key.isdigit() else (None, name)


def display_name(name: str) -> str:
    """A name as users write it: without the chain key."""
    return split_key(name)[1]


def _uptodate(path: Path, mtime_ns: int) -> Callable[[], bool]:
    # Whether a file earlier in a chain now wins is for resolve() to notice.
    def uptodate() -> bool:
        try:
            return path.stat().st_mtime_ns == mtime_ns
        except OSError:
            return False

    return uptodate


def check_apart(folders: Mapping[str, Path]) -> None:
    """Refuse template folders of which one lies inside another.

    A tenant's folder inside the application's would let every tenant read it
    through ``"app:..."``; one tenant's inside another's would let the outer
    tenant read it through ``"tenant:..."``; the application's inside a
    tenant's would let that tenant read the application's private templates.
    The same folder twice is fine (it is shared on purpose).

    Args:
        folders: Folders by the settings key that names them.

    Raises:
        ConfigurationError: naming the key of the inner folder.
    """
    by_path: dict[Path, str] = {}
    for key, folder in folders.items():
        by_path.setdefault(folder.resolve(), key)
    for path, key in by_path.items():
        for parent in path.parents:
            outer = by_path.get(parent)
            if outer is not None:
                raise ConfigurationError(
                    f"{str(folders[key])!r} lies inside {str(folders[outer])!r} ({outer}), "
                    "whose templates could then read it; keep template folders apart",
                    key=key,
                )
