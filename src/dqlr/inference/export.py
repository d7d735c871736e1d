"""`dqlr export --format bioimageio`: a model and an example stack -> a bioimage.io package.

The example stack is presented as `dqlr enhance` presents it (sharp end on top, the model's pixel
size) and, for a depth-aware model, its degradation by depth is estimated the same way; that curve
of levels by slice index is what the package carries (dqlr.model.stack). A block of its top slices
becomes the package's test input. Without an example, a simulated stack at the model's voxel size
stands in. The written package is then tested by bioimage.io's own runner on its test tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dqlr.config import EnhanceOptions
from dqlr.errors import DqlrError
from dqlr.inference.enhance import ModelLike, as_model, degradation_levels, model_views
from dqlr.io import check_stack, read_stack

# The test block: at most this many top slices and a central crop of at most this many pixels.
TEST_DEPTH = 16
TEST_SIDE = 128
EXAMPLE_SHAPE = (48, 128, 128)  # the simulated example when none is given


def test_block(view: Any, depth: int = TEST_DEPTH, side: int = TEST_SIDE) -> np.ndarray:
    """The top `depth` slices of a stack (view), cropped to a central `side` x `side`."""
    z, height, width = view.shape
    y0, x0 = max((height - side) // 2, 0), max((width - side) // 2, 0)
    return np.stack([np.asarray(view[k])[y0 : y0 + side, x0 : x0 + side] for k in range(min(z, depth))])


def _example(
    example: str | Path | np.ndarray | None, voxel_size: tuple[float, float, float] | None, trained: Any
) -> tuple[Any, tuple[float, float, float] | None, str]:
    """The example stack's data, voxel size and name (a simulated stack when none is given)."""
    if example is None:
        from dqlr.simulation import simulate_plant

        voxel = tuple(trained) if trained else (1.0, 0.25, 0.25)
        plant = simulate_plant(EXAMPLE_SHAPE, voxel_size=voxel, seed=0)
        return plant.observed, plant.voxel_size, "a simulated SAM stack"
    if isinstance(example, np.ndarray):
        return example, voxel_size, "the example stack"
    stack = read_stack(example, lazy=True)
    return stack.data, voxel_size or stack.voxel_size, str(example)


def export_bioimageio(
    model: ModelLike,
    output: str | Path,
    example: str | Path | np.ndarray | None = None,
    *,
    voxel_size: tuple[float, float, float] | None = None,
    name: str = "DQLR z-stack restoration",
    authors: list[str] | None = None,
    license: str = "BSD-3-Clause",
    force: bool = False,
    test: bool = True,
) -> tuple[Path, list[str]]:
    """Write `model` as a bioimage.io package at `output` (.zip) and, with `test`, run
    bioimage.io's test of it; returns the path and notes on the example stack."""
    from dqlr.model.package import check_output, write_package

    check_output(output, force)  # before any work
    loaded = as_model(model, "cpu")
    data, voxel, source = _example(example, voxel_size, loaded.meta.get("voxel_size"))
    check_stack(data, source)
    views, notes = model_views(data, loaded, EnhanceOptions(), voxel)
    levels, more = degradation_levels(views[0], loaded)
    notes = [f"{source}: {note}" for note in notes + more]
    if loaded.config.model.initial_state == "random":
        notes.append("the package starts the top slice from a zero state (the model draws a random one)")
    path = write_package(
        loaded,
        output,
        test_block(views[0]),
        levels,
        name=name,
        authors=authors,
        license=license,
        notes=notes,
        force=force,
    )
    if test:
        failure = test_package(path)
        if failure:
            raise DqlrError(f"{path}: written, but bioimage.io's test of it failed: {failure}")
    return path, notes


def test_package(path: str | Path) -> str | None:
    """Run bioimage.io's test of a package (validation, then each weights format on the test
    tensors) on the CPU; None when it passes, else the first failure in one line."""
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise DqlrError(
            "testing a bioimage.io package needs bioimageio.core: pip install 'dqlr[bioimageio]'"
        ) from None

    summary = test_model(str(path), devices=["cpu"])
    if summary.status == "passed":
        return None
    errors = [f"{d.name}: {e.msg}" for d in summary.details for e in d.errors]
    return (errors[0] if errors else summary.status).splitlines()[0][:300]
