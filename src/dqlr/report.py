"""Pictures a person would rather look at than read: slices side by side with zoomed insets."""

from __future__ import annotations

import base64
import html
import json
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def save_figure(fig: object, path: str | Path, dpi: int = 90) -> Path:
    """Lay out, write atomically (temp file + rename) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def _display_range(stack: np.ndarray) -> tuple[float, float]:
    """One display range per stack (like the normalisation): deep slices look as dim as they are."""
    sample = np.asarray(stack[:: max(1, stack.shape[0] // 16)], dtype=np.float32)
    low, high = np.percentile(sample, [0.5, 99.8])
    return float(low), float(max(high, low + 1e-6))


MAX_STRETCH = 10.0


def _slice_range(image: np.ndarray, stack_range: tuple[float, float]) -> tuple[float, float]:
    """Display range of one slice, at least 1/MAX_STRETCH of its stack's range wide."""
    low, high = (float(v) for v in np.percentile(image, [0.5, 99.8]))
    floor = (stack_range[1] - stack_range[0]) / MAX_STRETCH
    if high - low < floor:
        centre = (low + high) / 2
        low, high = centre - floor / 2, centre + floor / 2
    return low, high


def depth_indices(depth: int) -> list[int]:
    """Top, middle and deepest slice."""
    return [0, depth // 2, depth - 1]


def slice_figure(
    stacks: Mapping[str, np.ndarray],
    path: str | Path,
    slices: list[int] | None = None,
    inset: float = 0.25,
    title: str | None = None,
    per_slice_contrast: bool = False,
) -> Path:
    """A grid: one row per depth, one column per stack, each with a zoomed inset of the centre.

    With per_slice_contrast the display range is set per slice, so the structure of dim deep slices
    can be compared by eye (the intensities are then not comparable between rows). A slice is
    stretched at most MAX_STRETCH times more than its whole stack, so a near-empty slice above the
    tissue looks near-empty instead of showing its faint residue at full contrast.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stacks)
    depth = next(iter(stacks.values())).shape[0]
    slices = slices if slices is not None else depth_indices(depth)
    ranges = {name: _display_range(stack) for name, stack in stacks.items()}
    fig, axes = plt.subplots(
        len(slices), len(names), figsize=(3.2 * len(names), 3.2 * len(slices)), squeeze=False
    )
    for row, z in enumerate(slices):
        for col, name in enumerate(names):
            image = np.asarray(stacks[name][z], dtype=np.float32)
            low, high = ranges[name]
            if per_slice_contrast:
                low, high = _slice_range(image, ranges[name])
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:  # long method names wrap instead of running into the next column
                ax.set_title(textwrap.fill(name, 28), fontsize=10)
            if col == 0:
                ax.set_ylabel(f"slice {z + 1}/{depth}")
            h, w = image.shape
            size_y, size_x = max(int(h * inset), 8), max(int(w * inset), 8)
            y0, x0 = (h - size_y) // 2, (w - size_x) // 2
            box = ax.inset_axes([0.58, 0.58, 0.4, 0.4])
            box.imshow(
                image[y0 : y0 + size_y, x0 : x0 + size_x],
                cmap="gray",
                vmin=low,
                vmax=high,
                interpolation="nearest",
            )
            box.set_xticks([])
            box.set_yticks([])
            for spine in box.spines.values():
                spine.set_color("yellow")
            ax.add_patch(plt.Rectangle((x0, y0), size_x, size_y, fill=False, edgecolor="yellow", lw=0.8))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def depth_plot(curves: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> Path:
    """One panel per measure, one line per method, depth (slice) on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measures = list(next(iter(curves.values())))
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.4), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        for name, values in curves.items():
            ax.plot(np.arange(1, len(values[measure]) + 1), values[measure], label=name)
        ax.set_xlabel("slice (top → deep)")
        ax.set_title(measure)
    axes[0, 0].legend(fontsize=7)
    return save_figure(fig, path)


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


def build_report(
    stacks: Mapping[str, np.ndarray],
    path: str | Path,
    reference: np.ndarray | None = None,
    settings: Mapping[str, object] | None = None,
    title: str = "dqlr report",
    pairs: Mapping[str, tuple[str, str]] | None = None,
) -> Path:
    """One self-contained HTML file (PNG figures inlined) comparing stacks of the same scene.

    `stacks` maps a method name to its stack; the first is taken as the input. `pairs` adds
    two-column figures such as {"without vs with quantization": ("ablation", "DQLR")}. With a clean
    `reference`, PSNR and SSIM by depth are shown; the no-reference measures always are.
    """
    from dqlr.metrics import no_reference, per_slice, thirds

    path = Path(path)
    names = list(stacks)
    first = names[0]
    curves: dict[str, dict[str, np.ndarray]] = {}
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
        sections = "".join(
            f"<figure><img alt='{html.escape(c)}' src='{_png_data_uri(p)}'>"
            f"<figcaption>{html.escape(c)}</figcaption></figure>"
            for c, p in figures.items()
        )
    settings_html = _table_html(
        [{"setting": k, "value": json.dumps(v, default=str)} for k, v in (settings or {}).items()]
    )
    note = (
        "PSNR/SSIM after a least-squares affine fit to the clean reference. "
        if reference is not None
        else "No clean reference: sharpness, membrane contrast and noise level by depth. "
    )
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #bbb;padding:3px 6px}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Input: <b>{html.escape(first)}</b>. {note}Top and deep are the mean over the top and the
deepest third of the slices.</p>
<h2>Summary</h2>{_table_html(rows)}
<h2>Figures</h2>{sections}
<h2>Settings</h2>{settings_html or "<p>none given</p>"}
<script>window.addEventListener("load",function(){{var n=0;document.querySelectorAll("img")
.forEach(function(i){{if(i.complete&&i.naturalWidth>0)n++;}});
document.body.setAttribute("data-images-rendered",n);}});</script>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_html = path.with_name(f".{path.name}.tmp")
    tmp_html.write_text(document, encoding="utf-8")
    tmp_html.replace(path)
    return path


def report_files(
    input_path: str | Path,
    results: Mapping[str, str | Path],
    output: str | Path,
    reference: str | Path | None = None,
    force: bool = False,
    title: str = "dqlr report",
) -> Path:
    """Read the input, each named result and an optional clean reference; write the HTML report."""
    from dqlr.errors import DqlrError
    from dqlr.io import read_stack

    output = Path(output)
    if output.exists() and not force:
        raise DqlrError(f"{output}: exists; pass --force to overwrite")
    stacks = {"input": read_stack(input_path).data}
    for name, result in results.items():
        stacks[name] = read_stack(result).data
    clean = read_stack(reference).data if reference is not None else None
    for name, stack in {**stacks, **({"reference": clean} if clean is not None else {})}.items():
        if stack.shape != stacks["input"].shape:
            raise DqlrError(f"{name}: shape {stack.shape} differs from the input's {stacks['input'].shape}")
    return build_report(stacks, output, clean, title=title)


def degradation_figure(degradation: object, path: str | Path, truth: Mapping | None = None) -> Path:
    """Curves of an estimated DepthDegradation by depth (blur, halo, attenuation, background)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = ["blur_sigma_px", "halo_fraction", "attenuation", "background"]
    fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.2))
    depth = np.asarray(degradation.depth_index) + 1
    for ax, field in zip(axes, fields, strict=True):
        ax.plot(depth, np.asarray(getattr(degradation, field)), label="estimated")
        if truth is not None and field in truth:
            ax.plot(depth, np.asarray(truth[field]), "--", label="true")
            ax.legend(fontsize=8)
        ax.set_title(field)
        ax.set_xlabel("slice (top → deep)")
    fig.suptitle(
        f"noise: gain {degradation.gain:.3g}, read noise {degradation.read_noise:.3g}, "
        f"offset {degradation.offset:.3g}"
    )
    return save_figure(fig, path)
