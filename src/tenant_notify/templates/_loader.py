"""Where templates come from: safe names, template sources and the chain loader.

A *source* is a folder of templates with a label (``tenant``, ``app`` or
``builtin``). :class:`ChainLoader` loads ``label:path`` names from that one source
and plain names from the first source of the chain that has them; it never
follows a symlink out of a source, and refuses sources over
:data:`MAX_SOURCE_BYTES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jinja2
from jinja2.loaders import split_template_path

from ._sandbox import LimitExceeded

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


class ChainLoader(jinja2.BaseLoader):
    """Loads ``label:path`` names from one source and plain names from the chain."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = tuple(sources)
        # filename -> (name as users know it, source label), for error messages
        self.origins: dict[str, tuple[str, str]] = {}

    def find(self, source: Source, pieces: Sequence[str]) -> Path | None:
        """The file ``pieces`` names in ``source``, or None (missing, or a symlink out)."""
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
        if sep and label in LABELS:
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
            if stat.st_size > MAX_SOURCE_BYTES:
                raise LimitExceeded(
                    f"the template source is {stat.st_size:,} bytes; the limit is "
                    f"{MAX_SOURCE_BYTES:,}"
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
        self, path: Path, mtime_ns: int, earlier: Sequence[Source], pieces: Sequence[str]
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


def make_source(label: str, root: Path) -> Source:
    """A :class:`Source` for ``root``, resolved once."""
    return Source(label, root, root.resolve())
