"""examples/quickstart.ipynb runs end to end offline (executed here so it cannot rot)."""

from __future__ import annotations

from tests.conftest import ROOT


def test_quickstart_notebook_runs():
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "JSD" in text and "model-ovr-svm-tag-red" in text and "'valid': True" in text
