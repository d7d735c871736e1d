"""docs/tutorial.ipynb runs from top to bottom on tiny data and shows the numbers it promises."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def test_tutorial_runs_and_enhances(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)  # the napari cell is for desktops
    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells), "commit the notebook without outputs"
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    text = "\n".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    scores = re.search(r"PSNR: input ([\d.]+) dB, dqlr ([\d.]+) dB", text)
    assert scores, text
    assert float(scores[2]) > float(scores[1]) + 1.0  # the shipped model gains on the deep slices
    assert re.search(r"tiny model [\d.]+ dB, shipped [\d.]+ dB", text), text
    assert "enhanced (24, 128, 128) uint16" in text
    assert "napari skipped" in text
    images = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the slices, the blur curve, the comparison
