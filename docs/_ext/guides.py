"""Sphinx extension: the parts of the guides that are read from the code, so they never go stale.

* ``server-settings``: a directive, the table of every ``LLMFS_SERVE_*`` variable, read from the
  fields of :class:`reference.server.settings.ServerSettings` (type, default, and the comment
  written beside the field);
* the API reference: ``docs/api.md`` holds the line ``<!-- reference-modules -->``, which is
  replaced when the page is read by one section per module of the ``reference`` package (found
  with ``pkgutil``), each an ``automodule``. A module that a component page already documents is
  shown with ``:no-index:`` (its index entries stay on the component page). A module that
  imports a package this build lacks (lm-eval, outside the ``dev`` extra) gets a line saying so.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
API_MARKER = "<!-- reference-modules -->"


def field_comments(path: Path) -> dict[str, str]:
    """``{field: the comment on its line}`` for ``name: type = value  # comment`` lines.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d, "s.py")
    ...     _ = p.write_text("class S:\\n    port: int = 80  # the port\\n    host: str = ''\\n")
    ...     field_comments(p)
    {'port': 'the port'}
    """
    comments: dict[str, str] = {}
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        line = lines[token.start[0] - 1]
        match = re.match(r"\s+(\w+)\s*:", line)
        if match and token.start[1] > match.end():
            comments[match.group(1)] = token.string.lstrip("#").strip()
    return comments


def _type_name(annotation: Any) -> str:
    """``int | None``, ``'float' | 'dynamic' | None``: an annotation as a reader writes it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def section_comments(path: Path) -> dict[str, str]:
    """``{field: the last "# -- heading" comment above it}``."""
    out: dict[str, str] = {}
    heading = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"\s+# -- (.+)", line):
            heading = match.group(1).strip()
        elif heading and (match := re.match(r"\s+(\w+)\s*:", line)):
            out[match.group(1)] = heading.split(" (")[0]
    return out


def settings_rows() -> list[tuple[str, str, str, str, str]]:
    """(group, variable, type, default, what) for every field of ``ServerSettings``."""
    from reference.server import settings as module

    cls = module.ServerSettings
    path = Path(module.__file__ or "")
    comments, groups = field_comments(path), section_comments(path)
    rows = []
    for name, field in cls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(none)" if default is None else repr(default) if not isinstance(default, str) \
            else default
        rows.append((groups.get(name, ""), f"{module.ENV_PREFIX}{name.upper()}",
                     _type_name(field.annotation),
                     shown, comments.get(name, "")))
    return rows


class ServerSettingsTable(SphinxDirective):
    """Every ``LLMFS_SERVE_*`` setting, from the settings class itself."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from reference.server import settings as module

        self.env.note_dependency(str(module.__file__))
        rows = settings_rows()
        lines = [
            f"The {len(rows)} settings of `reference.server.settings.ServerSettings` (read from "
            "the class when these pages are built):",
            "",
            "| for | variable | type | default | what it does |",
            "|---|---|---|---|---|",
            *("| " + " | ".join(cell.replace("|", "\\|") for cell in (
                group, f"`{var}`", f"`{kind}`", f"`{default}`", what)) + " |"
              for group, var, kind, default, what in rows),
        ]
        box = nodes.container(classes=["server-settings"])
        self.state.nested_parse(StringList(lines, "ServerSettings"), self.content_offset, box)
        return [box]


def module_files() -> dict[str, Path]:
    """``{module: its file}`` for the ``reference`` package, found on disk (nothing imported:
    a module may need an optional package, which autodoc then stands in for)."""
    out: dict[str, Path] = {}
    for path in sorted((ROOT / "reference").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__" or "__pycache__" in parts:
            continue
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def reference_modules() -> list[str]:
    """Every module of the ``reference`` package but the ``__main__`` entry points, sorted."""
    return sorted(module_files())


def documented_elsewhere() -> dict[str, list[str]]:
    """``{module: its automodule options}`` for each module another page (the component pages)
    documents; the API page repeats those options (``:exclude-members:``, ``:no-members:``)."""
    found: dict[str, list[str]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        if page.name == "api.md" or "_build" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^\.\. automodule:: ([\w.]+)\n((?:   :.*\n)*)", text, re.M):
            found.setdefault(match.group(1), match.group(2).splitlines())
    return found


def _classes(name: str) -> set[str]:
    """The public classes module ``name`` defines at its top level (read, not imported)."""
    tree = ast.parse(module_files()[name].read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_")}


def missing_imports(name: str) -> list[str]:
    """The packages module ``name`` imports at its top level that are not installed here."""
    import importlib.util

    roots = set()
    for node in ast.parse(module_files()[name].read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return sorted(r for r in roots if importlib.util.find_spec(r) is None)


def api_sections() -> str:
    """The Markdown of the API page's sections: one heading and one automodule per module.

    Options: a module another page documents keeps that page's options, with ``:no-index:``
    (one index entry per object); a package shows its docstring only (its names are documented
    in its modules); a module defining a class whose name an indexed module already defines is
    not indexed either, so a short cross-reference (``Tokenizer``) keeps one target.
    """
    elsewhere = documented_elsewhere()
    modules = reference_modules()
    seen: set[str] = set()
    for name in modules:
        if name in elsewhere:
            seen |= _classes(name)
    out = []
    for name in modules:
        options: list[str] = []
        if name in elsewhere:
            options = [*elsewhere[name], "   :no-index:"]
        elif _is_package(name):
            options = ["   :no-members:"]
        elif _classes(name) & seen:
            options = ["   :no-index:"]
        else:
            seen |= _classes(name)
        if missing := missing_imports(name):  # e.g. lm-eval: only the dev extra installs it
            out.append(f"## `{name}`\n\nNot documented in this build: the module needs "
                       f"{', '.join(f'`{m}`' for m in missing)}, which is not installed "
                       "(`pip install -e '.[dev]'`).\n")
            continue
        body = "\n".join([f".. automodule:: {name}", *options])
        out.append(f"## `{name}`\n\n```{{eval-rst}}\n{body}\n```\n")
    return "\n".join(out)


def _is_package(name: str) -> bool:
    return module_files()[name].name == "__init__.py"


def _fill_api_page(app: Sphinx, docname: str, source: list[str]) -> None:
    if docname == "api" and API_MARKER in source[0]:
        source[0] = source[0].replace(API_MARKER, api_sections())


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("server-settings", ServerSettingsTable)
    app.connect("source-read", _fill_api_page)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
