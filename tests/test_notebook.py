"""The data scientist's walk-through notebook runs top to bottom on a small generated world."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "walkthrough.ipynb"


def _install_kernel(prefix: Path) -> Path:
    """A `python3` kernelspec under prefix that runs this interpreter (the project's venv)."""
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
         "--name", "python3"],
        check=True, capture_output=True,
    )
    kernels = prefix / "share" / "jupyter"
    spec = json.loads((kernels / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    return kernels


@pytest.mark.e2e
def test_walkthrough_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jupyter_path = _install_kernel(tmp_path / "kernel")
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("FEASTFLOW_HOME", str(tmp_path / "home"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "the notebook is stored with outputs: clear them before committing"
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(run_dir)}})
    client.execute()  # raises CellExecutionError if any cell fails

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in code_cells for o in c.outputs
                   if o.output_type == "stream")
    assert f"python: {sys.executable}" in text  # the kernel ran the project's interpreter
    assert f"home: {(tmp_path / 'home').resolve()}" in text  # and wrote under the test's home
    last = "".join(o.get("text", "") for o in code_cells[-1].outputs)
    assert "walkthrough ok" in last  # the final asserts passed
