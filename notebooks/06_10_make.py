"""Writes the chapter notebooks 06-10 (fine-tuning, inference, evaluation, serving, modern
decoders) from the cells below, outputs stripped.

    python notebooks/06_10_make.py          # rewrite notebooks/06_*.ipynb ... 10_*.ipynb
    python notebooks/06_10_make.py --check  # exit 1 if a notebook differs from its cells

The cells live in ``notebooks/06_10_cells.py`` (one list per notebook); this script only turns
them into nbformat 4 files with the ``python3`` kernel, no outputs and no execution counts.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def _cells() -> dict[str, list[tuple[str, str]]]:
    spec = importlib.util.spec_from_file_location("cells_06_10", HERE / "06_10_cells.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    notebooks: dict[str, list[tuple[str, str]]] = module.NOTEBOOKS
    return notebooks


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook of ``(kind, source)`` cells, kind ``"md"`` or ``"code"``, outputs stripped."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        text = source.strip("\n")
        cell = (nbformat.v4.new_markdown_cell(text) if kind == "md"
                else nbformat.v4.new_code_cell(text))
        cell["id"] = f"c{i:02d}"  # stable ids: the files change only when the cells do
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in _cells().items():
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build(cells)) + "\n"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print(f"stale: {', '.join(stale)} (run python notebooks/06_10_make.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
