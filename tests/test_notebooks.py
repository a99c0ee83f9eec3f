"""The tutorial notebooks: committed with their outputs, and their code still runs.

Each notebook reads ``SCROBUST_QUICK=1`` (tiny data, a few training steps) and
``SCROBUST_DATA_DIR`` (default ``../../shared/data`` from ``notebooks/``). Notebooks whose
data files are absent (CI has no ``../shared``) are skipped; the one on the bundled demo
data always runs.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
DATA_DIR = ROOT.parent / "shared" / "data"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
IDS = [path.stem for path in NOTEBOOKS]


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_tutorials():
    assert len(NOTEBOOKS) >= 5, f"expected the tutorial notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_executed(path):
    """Every code cell ran, once, top to bottom, without an error; figures are saved."""
    cells = _code_cells(_read(path))
    counts = [cell["execution_count"] for cell in cells if _source(cell).strip()]
    assert None not in counts, f"{path.name}: cells never executed; run it and commit the outputs"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts out of order: {counts}"
    errors = [o for cell in cells for o in cell.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"{path.name}: saved outputs hold errors: {[e['ename'] for e in errors]}"
    images = [o for cell in cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figure in the saved outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_declares_quick_and_data_settings(path):
    first = _source(next(c for c in _code_cells(_read(path)) if "import" in _source(c)))
    assert 'QUICK = os.environ.get("SCROBUST_QUICK") == "1"' in first, f"{path.name}: no QUICK flag at the top"
    uses_data = any("DATA_DIR /" in _source(c) for c in _code_cells(_read(path)))
    assert not uses_data or "DATA_DIR = " in first, f"{path.name}: DATA_DIR must be set at the top"


def _kernel(tmp_path: Path, monkeypatch) -> str:
    """A kernel spec that runs this interpreter (CI does not activate the venv)."""
    spec = tmp_path / "jupyter" / "kernels" / "scrobust-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "scrobust-test"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_on_the_quick_setting(path, tmp_path, monkeypatch):
    """Run the notebook's code with ``SCROBUST_QUICK=1`` (a few hundred cells, a few steps)."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: pip install -e '.[docs]'")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: pip install -e '.[docs]'")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed: pip install -e '.[docs]'")
    nb = nbformat.read(path, as_version=4)
    needed = sorted(
        {m for c in nb.cells if c.cell_type == "code" for m in re.findall(r'DATA_DIR / "([^"]+)"', c.source)}
    )
    missing = [name for name in needed if not (DATA_DIR / name).exists()]
    if missing:
        pytest.skip(f"{path.name} needs {missing} from {DATA_DIR}, which this checkout does not have")
    monkeypatch.setenv("SCROBUST_QUICK", "1")
    monkeypatch.setenv("SCROBUST_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        nb,
        kernel_name=_kernel(tmp_path, monkeypatch),
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
