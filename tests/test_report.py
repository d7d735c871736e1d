"""The HTML report is self-contained and renders its images in a real (headless) browser."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from dqlr.cli import main
from dqlr.evaluation.baselines import gaussian_smoothing
from dqlr.evaluation.metrics import evaluate
from dqlr.io import write_stack
from dqlr.reporting.report import build_report
from dqlr.simulation import simulate_plant

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    plant = simulate_plant(shape=(6, 48, 48), seed=5)
    smoothed = gaussian_smoothing(plant.observed, 1.0)
    path = tmp_path_factory.mktemp("report") / "report.html"
    build_report(
        {"input": plant.observed, "smoothed": smoothed},
        path,
        reference=plant.clean,
        settings={"sigma_px": 1.0},
        pairs={"input vs smoothed": ("input", "smoothed")},
    )
    return path


def test_report_is_self_contained(report) -> None:
    text = report.read_text()
    images = re.findall(r"<img [^>]*src='([^']*)'", text)
    assert len(images) == 4
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "psnr deep" in text and "sigma_px" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_its_images_in_chromium(report, tmp_path) -> None:
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    rendered = re.search(r'data-images-rendered="(\d+)"', result.stdout)
    assert rendered, result.stderr[-500:]
    assert int(rendered.group(1)) == 4


def test_report_command(tmp_path, capsys) -> None:
    plant = simulate_plant(shape=(5, 40, 40), seed=6)
    write_stack(tmp_path / "raw.tif", plant.observed)
    write_stack(tmp_path / "clean.tif", plant.clean)
    write_stack(tmp_path / "other.tif", np.ascontiguousarray(plant.observed[:, ::-1]))
    out = tmp_path / "r.html"
    args = [
        "report",
        str(tmp_path / "raw.tif"),
        "--result",
        f"flipped={tmp_path / 'other.tif'}",
        "--reference",
        str(tmp_path / "clean.tif"),
        "-o",
        str(out),
    ]
    assert main(args) == 0 and out.stat().st_size > 10_000
    page = out.read_text()
    assert f"Input: <b>input ({tmp_path / 'raw.tif'})</b>" in page  # the file, not just "input"
    assert str(tmp_path / "other.tif") in page and "none given" not in page
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err


def test_per_slice_contrast_does_not_blow_up_an_empty_slice() -> None:
    """A near-empty slice keeps a display range of at least a tenth of the stack's; a dim slice
    with real structure still gets its own (stretched) range."""
    from dqlr.reporting.figures import MAX_STRETCH, _slice_range

    rng = np.random.default_rng(0)
    stack_range = (100.0, 1100.0)
    residue = 120 + rng.normal(0, 1, (64, 64))  # faint texture above the tissue
    low, high = _slice_range(residue, stack_range)
    assert high - low == pytest.approx(1000.0 / MAX_STRETCH)
    assert low < residue.mean() < high
    dim = 100 + 300 * (rng.random((64, 64)) > 0.8)  # dim deep slice: membranes at a third of the range
    low, high = _slice_range(dim, stack_range)
    assert (low, high) == pytest.approx(tuple(np.percentile(dim, [0.5, 99.8])))


def test_report_with_labels_shows_cells_found_by_depth_and_overlays(tmp_path, capsys) -> None:
    """With true labels: the summary's cells found per third equal `evaluate`'s, and two figures
    more (by depth, overlays); through `dqlr report --labels` too, which refuses labels of another
    shape."""
    plant = simulate_plant(shape=(6, 64, 64), seed=3)
    smoothed = gaussian_smoothing(plant.observed, 1.0)
    path = build_report(
        {"input": plant.observed, "smoothed": smoothed}, tmp_path / "r.html", labels=plant.labels
    )
    page = path.read_text()
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", page)) == 5  # 3 without labels
    assert "cells found deep" in page and "Rand error deep" in page and "true cells they miss" in page
    for stack in (plant.observed, smoothed):
        deep = evaluate(stack, labels=plant.labels)["result"]["thirds"]["matched"]["deep"]
        assert f"<td>{deep:.3f}</td>" in page
    write_stack(tmp_path / "raw.tif", plant.observed)
    write_stack(tmp_path / "labels.tif", plant.labels)
    write_stack(tmp_path / "short.tif", plant.labels[:4])
    args = ["report", str(tmp_path / "raw.tif"), "--result", f"same={tmp_path / 'raw.tif'}", "-o"]
    assert main([*args, str(tmp_path / "a.html"), "--labels", str(tmp_path / "labels.tif")]) == 0
    assert "cells found deep" in (tmp_path / "a.html").read_text()
    assert main([*args, str(tmp_path / "b.html"), "--labels", str(tmp_path / "short.tif")]) == 2
    assert "labels: shape (4, 64, 64) differs" in capsys.readouterr().err
    # segmented as one volume: the summary is evaluate's with volume=True
    labels = ["--labels", str(tmp_path / "labels.tif"), "--volume"]
    assert main([*args, str(tmp_path / "c.html"), *labels]) == 0
    page = (tmp_path / "c.html").read_text()
    deep = evaluate(plant.observed, labels=plant.labels, volume=True)["result"]["thirds"]["matched"]["deep"]
    assert "the stack as one volume" in page and f"<td>{deep:.3f}</td>" in page
    assert main([*args, str(tmp_path / "d.html"), "--volume"]) == 2
    assert "needs --labels" in capsys.readouterr().err
