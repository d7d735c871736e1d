"""The main job on the built-in default: simulate a SAM stack, enhance it, draw a picture."""

from __future__ import annotations

from pathlib import Path

from dqlr.inference.enhance import enhance
from dqlr.io import write_stack
from dqlr.reporting.figures import slice_figure
from dqlr.simulation import simulate_plant


def run_demo(out_dir: str | Path = "out/demo", device: str = "auto", seed: int = 2026) -> Path:
    """Write demo_observed.tif, demo_clean.tif, demo_enhanced.tif and demo.png into out_dir.

    The demo folder is the demo's own, so a rerun replaces its files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plant = simulate_plant(seed=seed)
    write_stack(out_dir / "demo_observed.tif", plant.observed, plant.voxel_size, force=True)
    write_stack(out_dir / "demo_clean.tif", plant.clean, plant.voxel_size, force=True)
    result = enhance(plant.observed, None, device=device, progress=True, voxel_size=plant.voxel_size)
    write_stack(out_dir / "demo_enhanced.tif", result, plant.voxel_size, force=True)
    return slice_figure(
        {
            "input (simulated)": plant.observed,
            "dqlr (shipped model)": result,
            "clean (simulation truth)": plant.clean,
        },
        out_dir / "demo.png",
        title="dqlr demo: top, middle and deepest slice",
        per_slice_contrast=True,
    )
