"""The documentation builds warning-free, offline, and shows every spec's contract.

The docs (``docs/``, Sphinx with MyST Markdown) are built once per run with
``sphinx-build -W --keep-going -b html docs OUT`` (warnings are errors), in a subprocess whose
sockets refuse to connect and record every attempt: the build must make none. Then every
component page must exist and show each row of its spec's contract table (counted against
``tests/test_spec_contracts.contract_rows`` of the spec's docstring) and each classic bug of its
mutants file; and every guide, the API page (a section per ``reference`` module) and the
serving page's table of settings must be there. The commands the pages show are checked by
``tests/test_docs_commands.py``.

Without Sphinx or myst-parser the tests skip, except under CI (``CI`` or ``LLMFS_REQUIRE_DATA``
set), where a missing package is a failure (install them with the ``docs`` extra).
"""

from __future__ import annotations

import doctest
import html
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_spec_contracts import contract_rows

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REQUIRED = bool(os.environ.get("CI") or os.environ.get("LLMFS_REQUIRE_DATA"))
COMPONENTS = sorted(p.stem.removeprefix("test_") for p in (ROOT / "specs").glob("test_*.py"))

# Run in the build's subprocess before Sphinx: every socket connection or name lookup is refused
# and logged to the file named by LLMFS_DOCS_NET_LOG.
GUARD = """
import os, socket, sys
log = os.environ["LLMFS_DOCS_NET_LOG"]
def refuse(what):
    def refused(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{what} {args!r}\\n")
        raise OSError(f"the docs build reached the network: {what} {args!r}")
    return refused
socket.socket.connect = refuse("connect")
socket.socket.connect_ex = refuse("connect_ex")
socket.create_connection = refuse("create_connection")
socket.getaddrinfo = refuse("getaddrinfo")
from sphinx.cmd.build import main
sys.exit(main(sys.argv[1:]))
"""


def missing_packages() -> list[str]:
    return [name for name in ("sphinx", "myst_parser") if importlib.util.find_spec(name) is None]


def require_sphinx() -> None:
    missing = missing_packages()
    if missing:
        message = f"{', '.join(missing)} not installed: pip install -e '.[docs]'"
        if REQUIRED:
            pytest.fail(message + " (required under CI)")
        pytest.skip(message)


def ext_contracts() -> ModuleType:
    """``docs/_ext/contracts.py``, the extension that reads the specs at build time."""
    path = DOCS / "_ext" / "contracts.py"
    spec = importlib.util.spec_from_file_location("docs_ext_contracts", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Build:
    def __init__(self, out: Path, log: str, net: list[str]) -> None:
        self.out, self.log, self.net = out, log, net

    def page(self, component: str) -> str:
        path = self.out / "components" / f"{component}.html"
        assert path.is_file(), f"no page for {component}: {path.name} was not built " \
            f"(add docs/components/{component}.md and list it in docs/index.md)"
        return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    require_sphinx()
    tmp = tmp_path_factory.mktemp("docs")
    out, net_log = tmp / "html", tmp / "network.log"
    env = {**os.environ, "LLMFS_DOCS_NET_LOG": str(net_log), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-c", GUARD, "-W", "--keep-going", "-b", "html",
               "-d", str(tmp / "doctrees"), str(DOCS), str(out)]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"sphinx-build -W failed (exit {run.returncode}):\n{log[-6000:]}"
    net = net_log.read_text().splitlines() if net_log.exists() else []
    return Build(out, log, net)


def test_the_docs_build_without_warnings(build: Build) -> None:
    assert "WARNING" not in build.log and "ERROR" not in build.log, build.log[-6000:]
    assert (build.out / "index.html").is_file() and (build.out / "architecture.html").is_file()


def test_the_docs_build_never_reaches_the_network(build: Build) -> None:
    assert not build.net, "the build tried the network:\n" + "\n".join(build.net)
    remote = []
    for page in build.out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        # what a browser would fetch: scripts, stylesheets and images from another host
        remote += [f"{page.name}: {m}" for m in re.findall(
            r'<(?:script|link|img)\b[^>]*(?:src|href)="(?:https?:)?//[^"]*"', text)]
    assert not remote, "pages load remote resources:\n" + "\n".join(remote[:10])


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_page_shows_its_spec_contract_table(build: Build, component: str) -> None:
    spec = importlib.import_module(f"specs.test_{component}")
    rows = contract_rows(spec.__doc__ or "")
    page = build.page(component)
    start = page.find(f"contract-table-{component}")
    assert start >= 0, f"{component}.html has no {{contract-table}} {component} directive"
    end = page.find("</table>", start)
    table = page[start:end]
    shown = table.count("<tr") - 1  # the header row
    assert shown == len(rows), f"{component}.html shows {shown} contract rows, " \
        f"the spec has {len(rows)}"
    text = html.unescape(re.sub(r"<[^>]+>", "", table))
    missing = [t for _, tests, _ in rows for t in tests if t not in text]
    assert not missing, f"{component}.html's table lacks the tests {missing}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_page_lists_the_classic_bugs_its_spec_catches(
    build: Build, component: str
) -> None:
    mutants = importlib.import_module(f"tests.mutants.{component}").MUTANTS
    page = build.page(component)
    start = page.find(f"classic-bugs-{component}")
    assert start >= 0, f"{component}.html has no {{classic-bugs}} {component} directive"
    text = html.unescape(re.sub(r"<[^>]+>", "", page[start:]))
    missing = [name for name in mutants if name not in text]
    assert not missing, f"{component}.html lacks the classic bugs {missing}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_page_documents_an_api(build: Build, component: str) -> None:
    page = build.page(component)
    assert 'class="py function"' in page or 'class="py class"' in page, \
        f"{component}.html documents no function or class (its API section's autodoc is empty)"


def test_the_index_links_every_component_page(build: Build) -> None:
    index = (build.out / "index.html").read_text(encoding="utf-8")
    missing = [c for c in COMPONENTS if f'href="components/{c}.html"' not in index]
    assert not missing, f"index.html does not link {missing}"


def test_the_extension_reads_the_tables_as_the_contract_check_does() -> None:
    require_sphinx()  # the extension imports sphinx and docutils
    contracts = ext_contracts()
    failures, _ = doctest.testmod(contracts, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
    for component in COMPONENTS:
        spec = importlib.import_module(f"specs.test_{component}")
        expected = [clause for clause, _, _ in contract_rows(spec.__doc__ or "")]
        assert [c for c, _, _ in contracts.spec_contract(component)] == expected, component


def ext_guides() -> ModuleType:
    """``docs/_ext/guides.py``: the server settings table and the API page's module list."""
    path = DOCS / "_ext" / "guides.py"
    spec = importlib.util.spec_from_file_location("docs_ext_guides", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GUIDES = ["training", "finetuning", "evaluation", "serving", "distributed", "troubleshooting"]


def test_the_index_links_every_guide_and_the_api_page(build: Build) -> None:
    index = (build.out / "index.html").read_text(encoding="utf-8")
    missing = [g for g in GUIDES if f'href="guides/{g}.html"' not in index]
    assert not missing, f"index.html does not link the guides {missing}"
    assert 'href="api.html"' in index


def test_the_api_page_has_a_section_per_reference_module(build: Build) -> None:
    page = (build.out / "api.html").read_text(encoding="utf-8")
    headings = {html.unescape(re.sub(r"<[^>]+>", "", h)).strip("¶ \n")
                for h in re.findall(r"<h2>(.*?)</h2>", page, flags=re.S)}
    modules = ext_guides().reference_modules()
    assert "reference.cli" in modules and "reference.server.settings" in modules
    missing = [m for m in modules if m not in headings]
    assert not missing, f"api.html has no section for {missing}"
    assert page.count('class="py function"') + page.count('class="py class"') > len(modules)


def test_the_serving_page_lists_every_server_setting(build: Build) -> None:
    from reference.server.settings import ENV_PREFIX, ServerSettings

    page = html.unescape((build.out / "guides" / "serving.html").read_text(encoding="utf-8"))
    missing = [name for name in ServerSettings.model_fields
               if f"{ENV_PREFIX}{name.upper()}" not in page]
    assert not missing, f"serving.html does not list the settings {missing}"


def test_the_extension_for_the_guides_reads_the_code() -> None:
    require_sphinx()
    guides = ext_guides()
    failures, _ = doctest.testmod(guides, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
    rows = guides.settings_rows()
    from reference.server.settings import ServerSettings

    assert [var for _, var, _, _, _ in rows] == \
        [f"LLMFS_SERVE_{n.upper()}" for n in ServerSettings.model_fields]
    assert ("security", "LLMFS_SERVE_ALLOW_ANONYMOUS", "bool", "False",
            "no key required (only for a server on 127.0.0.1)") in rows


# The commands the pages show are checked by tests/test_docs_commands.py.
