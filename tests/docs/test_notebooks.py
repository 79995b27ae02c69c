"""The notebooks of docs/notebooks run from top to bottom in a fresh Jupyter kernel (nbclient), each
in a temporary folder, quickly (BITNET_NOTEBOOK_QUICK=1: fewer images and epochs) and with
BITNET_DATA pointing at the data sets (nothing is downloaded); and they are stored without outputs.
Skipped, with the reason, where nbclient or ipykernel is not installed (the `test` extra brings them)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "docs" / "notebooks").glob("*.ipynb"))
DATA = REPO.parent / "shared" / "data"


def test_there_are_notebooks_and_they_are_stored_without_outputs():
    assert len(NOTEBOOKS) >= 4
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, \
                    f"{path.name}: strip the outputs before committing (jupyter nbconvert --clear-output)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    data = os.environ.get("BITNET_DATA") or (str(DATA) if DATA.is_dir() else None)
    if data is None:
        pytest.skip("no data sets here (set BITNET_DATA)")
    monkeypatch.setenv("BITNET_DATA", data)
    monkeypatch.setenv("BITNET_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    shutil.copy(path, tmp_path / path.name)
    nb = nbformat.read(tmp_path / path.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the cell and its traceback on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    if path.name.startswith("01-"):
        text = "".join(o.get("text", "") for o in outputs)
        assert "packed file: test accuracy" in text and "same class as the float model" in text
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert images, "the history plot did not display"
    if path.name.startswith("04-"):
        text = "".join(o.get("text", "") for o in outputs)
        assert "CUDA GPU found" in text or ("No usable CUDA GPU here" in text and "skipped: no GPU" in text)
    if path.name.startswith("03-"):
        assert any("image/png" in o.get("data", {}) for o in outputs), "the speed-up plot did not display"
