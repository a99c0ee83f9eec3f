"""The documentation: the Sphinx site builds without warnings and the API page is complete."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import shutil
import time
import warnings
from pathlib import Path

import pytest

import scrobust_sc

DOCS = Path(__file__).resolve().parents[1] / "docs"
API_PAGE = DOCS / "api.md"
MODULES = ["pp", "tl", "pl", "data", "benchmark"]


def _public_functions():
    for module in MODULES:
        mod = importlib.import_module(f"scrobust_sc.{module}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                yield f"{module}.{name}", obj
    for name, member in vars(scrobust_sc.SCRobust).items():
        func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
        if not name.startswith("_") and inspect.isfunction(func):
            yield f"SCRobust.{name}", func


@pytest.mark.parametrize("module", MODULES + ["model"])
def test_api_page_lists_every_public_name(module):
    """Each name in a module's ``__all__`` has an entry ``module.name`` in docs/api.md."""
    text = API_PAGE.read_text()
    mod = importlib.import_module(f"scrobust_sc.{module}")
    listed = set(re.findall(r"\b(\w+)\.(\w+)\b", text))
    missing = [name for name in mod.__all__ if (module, name) not in listed]
    assert not missing, f"docs/api.md lacks scrobust_sc.{module}: {missing} (add them as `{module}.<name>`)"


def test_every_public_function_has_examples():
    """numpydoc ``Examples`` section in each public function and model method."""
    lacking = [name for name, func in _public_functions() if "Examples\n--------" not in (inspect.getdoc(func) or "")]
    assert not lacking, f"docstrings without an Examples section: {lacking}"


def test_docs_build_without_warnings(tmp_path):
    """``sphinx-build -W`` of docs/ (notebooks rendered from their saved outputs, not run)."""
    pytest.importorskip("sphinx", reason="sphinx is not installed: pip install -e '.[docs]'")
    pytest.importorskip("myst_nb", reason="myst-nb is not installed: pip install -e '.[docs]'")
    pytest.importorskip("furo", reason="furo is not installed: pip install -e '.[docs]'")
    # a fresh copy, so that generated API stubs and caches of earlier builds play no part
    source = tmp_path / "docs"
    stale = shutil.ignore_patterns("_build", "generated", "jupyter_execute")
    shutil.copytree(DOCS, source, symlinks=True, ignore=stale)
    # the tutorial pages are links to ../../notebooks/*.ipynb: keep them pointing at the repository
    notebooks = tmp_path / "notebooks"
    notebooks.symlink_to(DOCS.parent / "notebooks")
    # in this process: a fresh interpreter spent ~12 s importing the package again for autodoc
    from sphinx.cmd.build import build_main

    messages = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(messages), contextlib.redirect_stderr(messages), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Python deprecation notices of the extensions; Sphinx's own warnings fail it
        status = build_main(["-W", "--keep-going", "-q", "-b", "html", str(source), str(tmp_path / "html")])
    seconds = time.perf_counter() - start
    assert status == 0, f"sphinx-build failed ({seconds:.0f} s):\n{messages.getvalue()[-6000:]}"
    html = tmp_path / "html"
    assert (html / "api.html").exists()
    assert (html / "tutorials" / "index.html").exists()
    assert list((html / "generated").glob("scrobust_sc.tl.annotate.html"))
