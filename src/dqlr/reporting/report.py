"""One self-contained HTML page comparing results by depth, with its figures inlined."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dqlr.atomic import refuse_existing, write_text
from dqlr.reporting.figures import depth_indices, depth_plot, segmentation_figure, slice_figure


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table_html(rows: list[dict[str, object]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
            for v in row.values()
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


_SCORE_NAMES = {
    "matched": "cells found",
    "rand_error": "Rand error",
    "split": "split cells",
    "merged": "merged cells",
}


def _segmentation(
    stack: np.ndarray, labels: np.ndarray, shown: list[int], volume: bool = False
) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Per-slice segmentation scores of a stack against true labels (named for the page), and its
    segments of the slices in `shown`; segmented slice by slice, or as one volume."""
    from dqlr.evaluation.segmentation import segment_stack, slice_scores

    scores: dict[str, list[float]] = {name: [] for name in _SCORE_NAMES.values()}
    segments = {}
    for z, found in enumerate(segment_stack(stack, volume=volume)):
        for key, value in slice_scores(np.asarray(labels[z]), found).items():
            scores[_SCORE_NAMES[key]].append(value)
        if z in shown:
            segments[z] = found
    return {name: np.array(values) for name, values in scores.items()}, segments


def build_report(
    stacks: Mapping[str, np.ndarray],
    path: str | Path,
    reference: np.ndarray | None = None,
    settings: Mapping[str, object] | None = None,
    title: str = "dqlr report",
    pairs: Mapping[str, tuple[str, str]] | None = None,
    made: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
    labels: np.ndarray | None = None,
    volume: bool = False,
) -> Path:
    """One self-contained HTML file (PNG figures inlined) comparing stacks of the same scene.

    `files` maps a method name (or "reference") to the file its stack came from, shown on the page.
    `made` maps a method name to how its stack was made (the text dqlr stores in its outputs: the
    version, the model, and every note on what differed from the model's assumptions).
    `stacks` maps a method name to its stack; the first is taken as the input. `pairs` adds
    two-column figures such as {"without vs with quantization": ("ablation", "DQLR")}. With a clean
    `reference`, PSNR and SSIM by depth are shown; the no-reference measures always are. With true
    cell `labels`, every slice of every stack is segmented (dqlr.evaluation.segmentation): the
    cells found (IoU >= 0.5), Rand error, split and merged cells by depth, and overlays of the
    segments on the top, middle and deepest slice with the cells they miss; with `volume` each
    stack is segmented as one volume (a 3-D seeded watershed) instead of slice by slice.
    """
    from dqlr.evaluation.metrics import no_reference, per_slice, thirds

    path = Path(path)
    names = list(stacks)
    first = names[0]
    curves: dict[str, dict[str, np.ndarray]] = {}
    cells: dict[str, dict[str, np.ndarray]] = {}
    segments: dict[str, dict[int, np.ndarray]] = {}
    overlaid = depth_indices(next(iter(stacks.values())).shape[0])
    rows = []
    for name, stack in stacks.items():
        values = dict(no_reference(stack))
        if reference is not None:
            values = {**per_slice(stack, reference), **values}
        curves[name] = values
        row: dict[str, object] = {"method": name}
        for measure, per_depth in values.items():
            parts = thirds(per_depth)
            row[f"{measure} top"] = parts["top"]
            row[f"{measure} deep"] = parts["deep"]
        if labels is not None:
            cells[name], segments[name] = _segmentation(stack, labels, overlaid, volume)
            for measure in ("cells found", "Rand error"):
                parts = thirds(cells[name][measure])
                row[f"{measure} top"] = parts["top"]
                row[f"{measure} deep"] = parts["deep"]
        rows.append(row)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        figures = {
            "Input and DQLR at the top, middle and deepest slice (zoomed insets)": slice_figure(
                {n: stacks[n] for n in names[:2]}, tmp_dir / "fig3.png", per_slice_contrast=True
            ),
        }
        for caption, (left, right) in (pairs or {}).items():
            figures[caption] = slice_figure(
                {left: stacks[left], right: stacks[right]},
                tmp_dir / f"pair{len(figures)}.png",
                per_slice_contrast=True,
            )
        side = dict(stacks)
        if reference is not None:
            side["clean reference"] = reference
        figures["All methods side by side"] = slice_figure(side, tmp_dir / "all.png", per_slice_contrast=True)
        figures["Quality by depth"] = depth_plot(curves, tmp_dir / "depth.png")
        if labels is not None:
            figures[
                "Segmentation by depth against the true cells (seeded watershed; cells found at IoU >= 0.5)"
            ] = depth_plot(cells, tmp_dir / "cells.png")
            figures["Segments (cyan) on the top, middle and deepest slice; true cells they miss in red"] = (
                segmentation_figure(stacks, segments, labels, tmp_dir / "overlays.png")
            )
        sections = "".join(
            f"<figure><img alt='{html.escape(c)}' src='{_png_data_uri(p)}'>"
            f"<figcaption>{html.escape(c)}</figcaption></figure>"
            for c, p in figures.items()
        )
    made_html = "".join(
        f"<h3>{html.escape(name)}</h3><pre>{html.escape(text)}</pre>" for name, text in (made or {}).items()
    )
    files_html = _table_html([{"stack": k, "file": v} for k, v in (files or {}).items()])
    shown = f"{first} ({files[first]})" if files and first in files else first
    settings_html = _table_html(
        [{"setting": k, "value": json.dumps(v, default=str)} for k, v in (settings or {}).items()]
    )
    note = (
        "PSNR/SSIM after a least-squares affine fit to the clean reference. "
        if reference is not None
        else "No clean reference: sharpness, membrane contrast and noise level by depth. "
    )
    if labels is not None:
        note += (
            "Cells found: the share of the true cells a standard seeded-watershed segmentation of "
            + ("the stack as one volume" if volume else "each slice")
            + " matches at IoU >= 0.5 (adapted Rand error: lower is better). "
        )
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #bbb;padding:3px 6px}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Input: <b>{html.escape(shown)}</b>. {note}Top and deep are the mean over the top and the
deepest third of the slices.</p>
<h2>Summary</h2>{_table_html(rows)}
<h2>Figures</h2>{sections}
<h2>How the results were made</h2>{made_html or "<p>not recorded in the result files</p>"}
{"<h2>Files</h2>" + files_html if files_html else ""}
{"<h2>Settings</h2>" + settings_html if settings_html else ""}
<script>window.addEventListener("load",function(){{var n=0;document.querySelectorAll("img")
.forEach(function(i){{if(i.complete&&i.naturalWidth>0)n++;}});
document.body.setAttribute("data-images-rendered",n);}});</script>
</body></html>
"""
    return write_text(path, document)


def report_files(
    input_path: str | Path,
    results: Mapping[str, str | Path],
    output: str | Path,
    reference: str | Path | None = None,
    force: bool = False,
    title: str = "dqlr report",
    labels: str | Path | None = None,
    volume: bool = False,
) -> Path:
    """Read the input, each named result, an optional clean reference and optional true cell labels
    (segmentation scores and overlays by depth, slice by slice or with `volume` as one volume);
    write the HTML report."""
    from dqlr.errors import DqlrError
    from dqlr.io import read_stack

    if volume and labels is None:
        raise DqlrError("a volume segmentation (--volume) needs --labels")
    output = Path(output)
    refuse_existing(output, force)
    stacks = {"input": read_stack(input_path).data}
    files = {"input": str(input_path), **{name: str(p) for name, p in results.items()}}
    if reference is not None:
        files["reference"] = str(reference)
    made = {}
    for name, result in results.items():
        read = read_stack(result)
        stacks[name] = read.data
        if read.info:
            made[name] = read.info
    clean = read_stack(reference).data if reference is not None else None
    cells = read_stack(labels).data if labels is not None else None
    if labels is not None:
        files["labels"] = str(labels)
    others = {"reference": clean, "labels": cells}
    for name, stack in {**stacks, **{k: v for k, v in others.items() if v is not None}}.items():
        if stack.shape != stacks["input"].shape:
            raise DqlrError(f"{name}: shape {stack.shape} differs from the input's {stacks['input'].shape}")
    return build_report(
        stacks, output, clean, title=title, made=made, files=files, labels=cells, volume=volume
    )
