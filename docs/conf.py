"""Sphinx configuration: MyST Markdown pages, autodoc of ``reference/``, no network.

Build: ``.venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The contract tables and the classic bugs on the component pages are read from
``specs/test_<component>.py`` and ``tests/mutants/<component>.py`` at build time
(``docs/_ext/contracts.py``), so the pages never go stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from docutils.nodes import SkipNode

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]  # the project (autodoc) and the extension

project = "llm-from-scratch"
author = "the llm-from-scratch authors"
copyright = "2026, " + author

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "contracts",  # docs/_ext/contracts.py: contract tables and classic bugs from the specs
    "guides",  # docs/_ext/guides.py: the server settings table and the API page, from the code
]
# No intersphinx and no remote images: the build never reaches the network.

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = "llm-from-scratch"
html_static_path: list[str] = []
# Math is shown as its TeX source, so the pages load nothing from another host (MathJax would come
# from a CDN). Online, ``html_math_renderer = "mathjax"`` typesets it instead.
html_math_renderer = "tex"

# Import the server package before autodoc does: under Sphinx 9, importing FastAPI's pydantic
# models from autodoc's importer fails (PydanticSchemaGenerationError on ``__pydantic_extra__``;
# sphinx-doc/sphinx#14337), while a plain import here works and autodoc then reuses the module.
import reference.server.app  # noqa: E402, F401

# Docstrings write absolute values in plain text (``ECE = |0.6 - 0.9| = 0.3``), which
# reStructuredText reads as a substitution reference; outside literal blocks, show such a
# ``|a - b|`` as code.
ABSOLUTE_VALUE = re.compile(
    r"(?<![`\\\w|])\|(?=[^|`\s])([^|`\n]*\s[-+*/]\s[^|`\n]*)(?<=\S)\|(?![`\w|])"
)


def plain_absolute_values(app: Any, what: str, name: str, obj: Any, options: Any,
                          lines: list[str]) -> None:
    literal_indent: int | None = None  # the indent of the paragraph that opened a literal block
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None and line.strip() and indent <= literal_indent:
            literal_indent = None
        if literal_indent is None:
            if not line.lstrip().startswith((">>>", "...")):
                lines[i] = ABSOLUTE_VALUE.sub(r"``|\1|``", line)
            if line.rstrip().endswith("::"):
                literal_indent = indent


def _tex(tag: str) -> Any:
    def visit(self: Any, node: Any) -> None:
        text = self.encode(node.astext())
        body = f"<pre>{text}</pre>" if tag == "div" else f"<code>{text}</code>"
        start = self.starttag(node, tag, "", CLASS="math notranslate")
        self.body.append(f"{start}{body}</{tag}>")
        raise SkipNode

    return visit


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", plain_absolute_values)
    app.add_html_math_renderer("tex", (_tex("span"), None), (_tex("div"), None))
