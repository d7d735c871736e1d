#!/usr/bin/env python3
"""Write docs/tutorial.ipynb (without outputs) from the cells below.

    .venv/bin/python scripts/make_tutorial.py

The notebook is kept as this script so that a change to it is a readable diff; tests/test_tutorial.py
runs the written notebook on tiny data and checks its numbers.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "tutorial.ipynb"

CELLS: list[tuple[str, str]] = [
    (
        "markdown",
        """# dqlr in ten minutes

Simulate a shoot apical meristem stack, measure how it degrades with depth, enhance it with the
shipped model, score the result against the simulator's clean stack, train a small model of your
own, and look at it all in napari.

The stacks here are tiny so that the whole notebook runs in about a minute on a laptop CPU (our
CI runs it on every change). Your own stacks work the same way: `dqlr.read_stack("stack.tif")`.""",
    ),
    (
        "code",
        """import matplotlib.pyplot as plt
import numpy as np

import dqlr

print("dqlr", dqlr.__version__)""",
    ),
    (
        "markdown",
        """## 1. A simulated stack

`dqlr.simulate` draws a dome of cells and images it like a confocal microscope: the deeper the slice,
the wider the blur, the stronger the scattering halo, the dimmer the signal. Besides the observed
stack it returns the clean one, the true cells and the true degradation by depth.""",
    ),
    (
        "code",
        """plant = dqlr.simulate(shape=(24, 128, 128), seed=3)
print("observed", plant.observed.shape, plant.observed.dtype, "voxel size (µm, ZYX):", plant.voxel_size)

fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, z in zip(axes, (4, 20), strict=True):
    ax.imshow(plant.observed[z], cmap="gray")
    ax.set_title(f"observed, z = {z}")
    ax.axis("off")""",
    ),
    (
        "markdown",
        """## 2. How the stack degrades with depth

`dqlr.estimate` measures it from the stack alone (no clean data): extra blur, halo, attenuation and
noise per slice. The depth-aware default model is conditioned on this blur curve.""",
    ),
    (
        "code",
        """degradation = dqlr.estimate(plant.observed, voxel_size=plant.voxel_size)
true_blur = np.sqrt(np.maximum(plant.truth["psf_xy_um"] ** 2 - plant.truth["psf_xy_um"][0] ** 2, 0))
true_blur_px = true_blur / plant.voxel_size[2]

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(degradation.blur_sigma_px, label="estimated")
ax.plot(true_blur_px, "--", label="true (simulator)")
ax.set_xlabel("slice (z)")
ax.set_ylabel("extra blur (px)")
ax.legend()
print("notes:", degradation.notes or "none")""",
    ),
    (
        "markdown",
        """## 3. Enhance with the shipped model

One call. The result has the input's shape and dtype; notes on anything unusual about the stack
come as `DqlrWarning`s.""",
    ),
    (
        "code",
        """enhanced = dqlr.enhance(plant.observed, voxel_size=plant.voxel_size)
print("enhanced", enhanced.shape, enhanced.dtype)

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, image, title in zip(
    axes, (plant.observed[20], enhanced[20], plant.clean[20]), ("observed", "dqlr", "clean"), strict=True
):
    ax.imshow(image, cmap="gray")
    ax.set_title(f"{title}, z = 20")
    ax.axis("off")""",
    ),
    (
        "markdown",
        """## 4. Score it

With a clean reference (only a simulation has one) `dqlr.evaluate` gives PSNR and SSIM by depth,
after the best affine fit of the intensities. The deepest third is where restoration matters.""",
    ),
    (
        "code",
        """def deep_psnr(stack):
    return dqlr.evaluate(stack, reference=plant.clean)["result"]["thirds"]["psnr"]["deep"]


print(f"deepest third, PSNR: input {deep_psnr(plant.observed):.2f} dB, dqlr {deep_psnr(enhanced):.2f} dB")""",
    ),
    (
        "markdown",
        """## 5. Train a model of your own

Training needs only noisy stacks, no clean data. This one is tiny (a few seconds); the shipped
models trained for about half an hour each on a CPU (`dqlr config` lists every setting). A model
file is self-describing: weights, config and normalisation settings travel together.""",
    ),
    (
        "code",
        """import tempfile

training_stacks = [dqlr.simulate(shape=(12, 64, 64), seed=s).observed for s in (10, 11)]
tiny = {
    "model.base_channels": 8,
    "model.latent_channels": 8,
    "model.predict_next": 1,
    "data.crop": 32,
    "train.epochs": 1,
    "train.steps_per_epoch": 6,
    "train.batch_size": 4,
    "train.warmup_steps": 2,
    "train.val_windows": 4,
}
config = dqlr.Config().with_overrides(tiny)
run_dir = tempfile.mkdtemp(prefix="dqlr-tutorial-")
result = dqlr.train(training_stacks, run_dir, config, run=dqlr.RunOptions(progress=False))
mine = dqlr.enhance(plant.observed, result.best)
print("model file:", result.best)
print(f"deepest third, PSNR: tiny model {deep_psnr(mine):.2f} dB, shipped {deep_psnr(enhanced):.2f} dB")""",
    ),
    (
        "markdown",
        """## 6. Look at it in napari

Each stack becomes a layer, with the voxel size as its scale. This cell needs a display; it is
skipped on a machine without one (such as our CI).""",
    ),
    (
        "code",
        """import os
import sys

if os.environ.get("DISPLAY") or sys.platform in ("darwin", "win32"):
    import napari

    viewer = napari.Viewer()
    viewer.add_image(plant.observed, name="observed", scale=plant.voxel_size)
    viewer.add_image(enhanced, name="dqlr", scale=plant.voxel_size)
else:
    print("no display: napari skipped")""",
    ),
]


def main() -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    notebook.cells = [make[kind](source) for kind, source in CELLS]
    nbformat.validate(notebook)
    NOTEBOOK.write_text(nbformat.writes(notebook) + "\n")
    print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
    main()
