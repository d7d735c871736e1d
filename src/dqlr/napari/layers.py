"""napari's reader, writer and sample data for dqlr's stacks: the voxel size (µm) is the layer scale.

Each function turns a dqlr `Stack` into napari layer data or back, nothing more; reading,
writing and simulating are dqlr's own functions. A layer at napari's default scale (all 1)
counts as having no voxel size, so an unscaled image is never taken for 1 µm pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dqlr
from dqlr.errors import DqlrError
from dqlr.io import Stack, stack_format, write_stack

LayerData = tuple[Any, dict[str, Any], str]
SAMPLE_SHAPE = (32, 192, 192)  # a few seconds to simulate; deep enough to show the degradation


def voxel_size_of(scale: Sequence[float]) -> tuple[float, float, float] | None:
    """The voxel size (z, y, x) a layer's scale stands for; None at napari's default scale."""
    zyx = tuple(float(s) for s in scale[-3:])
    if len(zyx) != 3 or all(s == 1.0 for s in zyx):
        return None
    return (zyx[0], zyx[1], zyx[2])


def stack_layer(stack: Stack, name: str | None = None) -> LayerData:
    """An image layer of a stack: its voxel size as scale, its path and stored info as metadata."""
    kwargs: dict[str, Any] = {
        "name": name or _stem(stack.path or "stack"),
        "metadata": {"dqlr": {"path": stack.path, "info": stack.info}},
    }
    if stack.voxel_size is not None:
        kwargs["scale"] = tuple(stack.voxel_size)
    return stack.data, kwargs, "image"


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _readable(path: str) -> bool:
    try:
        stack_format(path)
    except DqlrError:
        return False
    return True


def get_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """napari asks which reader takes `path`: ours takes TIFF, OME-TIFF and (OME-)Zarr."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(_readable(str(p)) for p in paths):
        return None
    return read_layers


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """One image layer per file (a multi-channel file stops with dqlr's one-line message)."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    return [stack_layer(dqlr.read_stack(p)) for p in paths]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an image layer as a z-stack; its scale becomes the voxel size. napari's save dialog
    has asked before replacing a file, but the file the layer was read from is never replaced."""
    stored = (meta.get("metadata") or {}).get("dqlr") or {}
    source = stored.get("path")
    written = write_stack(
        path,
        data,
        voxel_size_of(meta.get("scale", ())),
        force=True,
        protect=[source] if source else [],
        info=stored.get("info"),
    )
    return [str(written)]


def simulated_sam(shape: tuple[int, int, int] | None = None, seed: int = 0) -> list[LayerData]:
    """dqlr's simulator as sample data: the observed stack, its clean reference and the cells."""
    plant = dqlr.simulate(shape=shape or SAMPLE_SHAPE, seed=seed)
    scale = tuple(plant.voxel_size)
    return [
        (plant.observed, {"name": "SAM observed", "scale": scale}, "image"),
        (plant.clean, {"name": "SAM clean", "scale": scale, "visible": False}, "image"),
        (plant.labels, {"name": "SAM cells", "scale": scale, "visible": False}, "labels"),
    ]
