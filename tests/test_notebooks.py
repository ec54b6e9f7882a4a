"""The chapter notebooks, without running them (that is ``pytest --nbmake notebooks``, its own CI
step): one per chapter, outputs stripped, the ``python3`` kernel, code that compiles, and each
naming its chapter's marker and docs page; plus ``notebooks/course.py``'s choice between the
learner's code and the library's.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

from tests.outcomes import ROOT

NOTEBOOKS = ROOT / "notebooks"
# chapter -> the markers (and docs pages, docs/components/<marker>.md) it may name: one at least
CHAPTERS = {
    "01_backprop": ("backprop",),
    "02_attention": ("attention",),
    "03_gpt": ("gpt",),
    "04_bpe": ("bpe",),
    "05_training": ("trainer",),
    "06_finetuning": ("finetune", "lora"),
    "07_inference": ("kvcache", "quantization", "batching"),
    "08_evaluation": ("evaluation",),
    "09_serving": ("server",),
    "10_modern_decoders": ("llama", "moe"),
}
ON_COLAB = ("05_training", "07_inference", "09_serving")  # the GPU-hungry ones
COLAB_LINK = "https://colab.research.google.com/github/<org>/llm-from-scratch/blob/main/notebooks/"


def _read(chapter: str) -> nbformat.NotebookNode:
    path = NOTEBOOKS / f"{chapter}.ipynb"
    assert path.is_file(), f"no notebook for chapter {chapter}: {path} is missing"
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def _code(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


# the chapters above, and any notebook added since (a later chapter): the same rules
NAMES = sorted(set(CHAPTERS) | {p.stem for p in NOTEBOOKS.glob("*.ipynb")})


def test_every_chapter_has_its_notebook() -> None:
    found = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert set(CHAPTERS) <= found, f"no notebook for {sorted(set(CHAPTERS) - found)}"
    badly_named = [n for n in found if not re.fullmatch(r"\d\d_[a-z0-9_]+", n)]
    assert not badly_named, f"notebooks are named NN_<chapter>.ipynb: {badly_named}"


@pytest.mark.parametrize("chapter", NAMES)
def test_notebook_is_stripped_nbformat4_on_the_python3_kernel(chapter: str) -> None:
    nb = _read(chapter)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", nb.metadata
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{chapter} cell {i}: outputs not stripped"
            assert cell.execution_count is None, f"{chapter} cell {i}: execution count kept"


@pytest.mark.parametrize("chapter", NAMES)
def test_each_code_cell_compiles(chapter: str) -> None:
    for i, source in enumerate(_code(_read(chapter))):
        python = "\n".join(
            "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
        )  # IPython's magics and shell lines are not Python
        try:
            compile(python, f"{chapter}.ipynb[{i}]", "exec")
        except SyntaxError as error:
            pytest.fail(f"{chapter} code cell {i} does not compile: {error}")


def _registered_markers() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    return set(re.findall(r'^\s*"(\w+): ', text.partition("markers = [")[2], re.MULTILINE))


@pytest.mark.parametrize("chapter", NAMES)
def test_notebook_names_its_marker_and_docs_page(chapter: str) -> None:
    text = "\n".join(cell.source for cell in _read(chapter).cells)
    markers = CHAPTERS.get(chapter) or tuple(sorted(_registered_markers() - {"slow"}))
    named = [m for m in markers if f"pytest exercises -m {m}" in text]
    assert named, f"{chapter} never says `pytest exercises -m {markers[0]}`"
    pages = [m for m in markers if f"docs/components/{m}.md" in text]
    assert pages, f"{chapter} names none of the docs pages docs/components/{markers}.md"
    for page in pages:
        assert (ROOT / "docs" / "components" / f"{page}.md").is_file(), page


@pytest.mark.parametrize("chapter", ON_COLAB)
def test_gpu_hungry_chapter_opens_in_colab_and_installs_only_there(chapter: str) -> None:
    nb = _read(chapter)
    text = "\n".join(cell.source for cell in nb.cells)
    assert f"{COLAB_LINK}{chapter}.ipynb" in text, f"{chapter}: no 'open in Colab' link"
    assert any('"google.colab" in sys.modules' in s and "pip" in s for s in _code(nb)), (
        f"{chapter}: no cell installing the project when (and only when) on Colab"
    )


@pytest.mark.parametrize("generator", ["make_notebooks.py", "06_10_make.py"])
def test_generated_notebooks_are_up_to_date(generator: str) -> None:
    """Chapters 1-5 are written by notebooks/make_notebooks.py, 6-10 by 06_10_make.py: the
    files are what they write."""
    run = subprocess.run(
        [sys.executable, str(NOTEBOOKS / generator), "--check"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_nbmake_is_a_dev_dependency() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    dev = text.partition("\ndev = [")[2].partition("\n]")[0]
    assert re.search(r'"nbmake\b', dev), "nbmake is not in the dev extra"


# --- notebooks/course.py ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def course() -> ModuleType:
    spec = importlib.util.spec_from_file_location("course", NOTEBOOKS / "course.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _is_stub(name: str) -> bool:
    from scripts import course_board

    return any(s.name == name for s in course_board.unfilled(ROOT))


def test_pick_falls_back_from_a_stub_and_says_so(
    course: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    if not _is_stub("exercises/attention.py::softmax"):
        pytest.skip("exercises/attention.py::softmax is filled in this checkout")
    from reference.attention import softmax

    assert course.pick("attention", "softmax", softmax) is softmax
    assert capsys.readouterr().out == (
        "attention.softmax: using the library's "
        "(your exercises/attention.py::softmax is still a stub)\n"
    )


def test_pick_counts_the_stubs_of_a_class(
    course: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    if not _is_stub("exercises/backprop/autograd.py::Value.backward"):
        pytest.skip("Value.backward is filled in this checkout")
    from solutions.backprop import Value

    assert course.pick("backprop", "Value", Value) is Value
    out = capsys.readouterr().out
    assert out.startswith("backprop.Value: using the worked solution's (your exercises/backprop/")
    assert "more are still stubs)" in out


def test_pick_of_a_name_the_exercises_lack_falls_back(
    course: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    fallback = object()
    assert course.pick("attention", "no_such_function", fallback) is fallback
    assert "exercises.attention does not give it: AttributeError" in capsys.readouterr().out


def test_a_filled_function_that_calls_a_stub_falls_back_when_called(
    course: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    def yours(x: int) -> int:
        raise NotImplementedError("exercises/attention.py::softmax is a stub: fill it in")

    guarded = course._guarded("attention.scaled_dot_product_attention", yours, lambda x: x + 1)
    assert guarded(1) == 2
    assert capsys.readouterr().out == (
        "attention.scaled_dot_product_attention: using the library's "
        "(your code calls exercises/attention.py::softmax, still a stub)\n"
    )


def test_course_docstring_examples_are_true(course: ModuleType) -> None:
    import doctest

    result = doctest.testmod(course, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3 and result.failed == 0, result


def test_the_readmes_course_map_links_what_exists() -> None:
    """Every phase of the README's course map names registered markers and files that exist."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.partition("## The course map")[2].partition("\n## ")[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and r[2].isdigit()]
    assert len(rows) == 10, "the course map has ten phases"
    markers = _registered_markers()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for marker in re.findall(r"`(\w+)`", cells[2]):
            assert marker in markers, f"{cells[0]}: marker {marker} is not registered"
        for cell in cells[3:6]:
            first = re.findall(r"`([\w/.-]+)`", cell)
            assert first, f"{cells[0]}: no path in {cell!r}"
            folder = Path(first[0]).parent
            for name in first:
                path = ROOT / name if "/" in name else ROOT / folder / name
                assert path.exists(), f"{cells[0]}: {name} does not exist"
