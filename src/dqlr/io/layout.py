"""What a file holds around its ZYX stacks, so an output can carry it over: the order and sizes of
its axes (time points, channels), each channel's name and display settings (ImageJ Ranges / LUTs,
OME Channel names, NGFF omero), ImageJ slice labels and the levels of an OME-Zarr pyramid."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from dqlr.errors import DqlrError
from dqlr.io.metadata import ngff_axes
from dqlr.io.read import _as_corrupt as as_corrupt
from dqlr.io.stack import PathLike, stack_format

# The axis orders each output format takes: NGFF puts time, then channel, then space; ImageJ
# hyperstacks are TZCYX; OME-TIFF and plain TIFF keep the input's order.
NGFF_ORDER = "TCZYX"
IMAGEJ_ORDER = "TZCYX"


@dataclass
class Channel:
    """How one channel is named and shown."""

    name: str | None = None
    display_range: tuple[float, float] | None = None
    lut: np.ndarray | None = field(default=None, repr=False)  # (3, 256) uint8: ImageJ's LUT

    @property
    def color(self) -> str | None:
        """The LUT's brightest colour as RRGGBB (NGFF omero's `color`)."""
        if self.lut is None:
            return None
        return "".join(f"{int(v):02X}" for v in np.asarray(self.lut)[:, -1])

    @staticmethod
    def lut_of(color: str) -> np.ndarray:
        """A linear LUT from black to `color` (RRGGBB), as ImageJ's channel colours are."""
        rgb = [int(color[i : i + 2], 16) for i in (0, 2, 4)]
        ramp = np.linspace(0.0, 1.0, 256)
        return np.round(np.outer(rgb, ramp)).astype(np.uint8)


@dataclass
class Layout:
    """The axes of a file (letters of TCZYX in file order, sizes along them) and what comes with
    them. `scales` are the ZYX downsampling factors of each pyramid level against level 0."""

    axes: str
    shape: tuple[int, ...]
    channels: list[Channel] = field(default_factory=list)  # one per channel, or none known
    labels: np.ndarray | None = None  # ImageJ slice labels over the axes before YX
    scales: list[tuple[float, float, float]] = field(default_factory=lambda: [(1.0, 1.0, 1.0)])

    @staticmethod
    def of_stack(shape: tuple[int, ...]) -> Layout:
        """A plain ZYX stack without metadata."""
        return Layout("ZYX", tuple(int(n) for n in shape))

    def size(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    @property
    def zyx(self) -> tuple[int, int, int]:
        return (self.size("Z"), self.size("Y"), self.size("X"))

    def select(self, channel: int | None, timepoint: int | None) -> Layout:
        """The layout with the given channel and time point picked (those axes dropped);
        None keeps an axis whole."""
        layout = self
        for axis, index in (("C", channel), ("T", timepoint)):
            if index is None or axis not in layout.axes:
                continue
            at = layout.axes.index(axis)
            labels = layout.labels
            if labels is not None:
                labels = np.take(labels, index, axis=at)
            channels = layout.channels
            if axis == "C" and channels:
                channels = [channels[index]]
            layout = replace(
                layout,
                axes=layout.axes.replace(axis, ""),
                shape=layout.shape[:at] + layout.shape[at + 1 :],
                labels=labels,
                channels=channels,
            )
        return layout

    def ordered(self, order: str) -> Layout:
        """The same layout with its axes in `order` (a string of TCZYX letters)."""
        axes = "".join(a for a in order if a in self.axes)
        if axes == self.axes:
            return self
        perm = [self.axes.index(a) for a in axes]
        labels = self.labels
        if labels is not None:
            labels = np.transpose(labels, [p for p in perm if p < labels.ndim])
        return replace(self, axes=axes, shape=tuple(self.shape[p] for p in perm), labels=labels)

    def planes(self) -> int:
        return int(np.prod(self.shape[:-2]))


def axis_order(fmt: str, imagej: bool, axes: str) -> str:
    """The axis order an output of format `fmt` is written in."""
    if fmt == "zarr":
        return NGFF_ORDER
    if imagej:
        return IMAGEJ_ORDER
    return "".join(a for a in axes if a not in "YX") + "YX"


def read_layout(path: PathLike) -> Layout:
    """The layout of a file that `read_stack` has accepted (one channel of it, at least)."""
    p = Path(path)
    with as_corrupt(p):
        return _zarr_layout(p) if stack_format(p) == "zarr" else _tiff_layout(p)


def _tiff_layout(p: Path) -> Layout:
    with tifffile.TiffFile(p) as tif:
        series = tif.series[0]
        axes, shape = _kept_axes(p, series.axes, tuple(series.shape))
        layout = Layout(axes, shape)
        if tif.is_imagej and tif.imagej_metadata:
            return _imagej_extras(layout, tif.imagej_metadata)
        if tif.is_ome and tif.ome_metadata:
            names = _ome_channel_names(tif.ome_metadata)
            if any(names) and len(names) == layout.size("C"):
                layout.channels = [Channel(name=n or None) for n in names]
        return layout


def _kept_axes(p: Path, letters: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """The file's axes as TCZYX letters: generic page axes (I, Q) are the slices, RGB samples (S)
    count as channels, other axes of size 1 are dropped."""
    axes = list(letters.replace("S", "C"))
    if "Z" not in axes:
        generic = [i for i, a in enumerate(axes) if a in "IQ" and shape[i] > 1]
        if len(generic) == 1:
            axes[generic[0]] = "Z"
    kept = [(a, n) for a, n in zip(axes, shape, strict=True) if a in "ZYX" or (a in "TC" and n > 1)]
    dropped = [a for a, n in zip(axes, shape, strict=True) if a not in "TCZYX" and n > 1]
    if dropped or sorted(a for a, _ in kept) != sorted(set(a for a, _ in kept)):
        raise DqlrError(f"{p}: has axes {letters!r}, which dqlr cannot write back; save it as TCZYX")
    return "".join(a for a, _ in kept), tuple(int(n) for _, n in kept)


def _imagej_extras(layout: Layout, meta: dict[str, Any]) -> Layout:
    """ImageJ's per-channel display ranges and LUTs, and its slice labels."""
    n = layout.size("C")
    ranges = meta.get("Ranges")
    if ranges is None and "min" in meta and "max" in meta:
        ranges = (meta["min"], meta["max"])
    ranges = [float(v) for v in ranges] if ranges is not None else []
    luts = list(np.asarray(meta["LUTs"], np.uint8).reshape(-1, 3, 256)) if "LUTs" in meta else []
    if len(ranges) == 2 * n or len(luts) == n:
        layout.channels = [
            Channel(
                display_range=(ranges[2 * c], ranges[2 * c + 1]) if len(ranges) == 2 * n else None,
                lut=luts[c] if len(luts) == n else None,
            )
            for c in range(n)
        ]
    labels = meta.get("Labels")
    if labels is not None and len(labels) == layout.planes():
        layout.labels = np.asarray(labels, dtype=object).reshape(layout.shape[:-2])
    return layout


def _ome_channel_names(xml: str) -> list[str]:
    """Names of the first image's channels ("" for an unnamed one)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return []
    pixels = root.find(".//{*}Image/{*}Pixels")
    if pixels is None:
        return []
    return [c.get("Name") or "" for c in pixels.findall("{*}Channel")]


def _zarr_layout(p: Path) -> Layout:
    """Axes, pyramid levels (from the datasets' scale transforms) and omero channels."""
    import zarr

    node: Any = zarr.open(str(p), mode="r")
    if isinstance(node, zarr.Array):
        names: Any = node.attrs.get("_ARRAY_DIMENSIONS")
        letters = ngff_axes(names) if names else NGFF_ORDER[-node.ndim :]
        axes, shape = _kept_axes(p, letters, tuple(node.shape))
        return Layout(axes, shape)
    attrs: dict[str, Any] = dict(node.attrs.asdict())
    attrs = attrs.get("ome", attrs)
    meta = attrs["multiscales"][0]
    first = node[meta["datasets"][0]["path"]]
    letters = ngff_axes(meta["axes"]) if meta.get("axes") else NGFF_ORDER[-first.ndim :]
    full = [_dataset_scale(d, node, first.shape) for d in meta["datasets"]]
    zyx = [letters.index(a) for a in "ZYX"]
    scales = [tuple(float(s[i] / full[0][i]) for i in zyx) for s in full]
    axes, shape = _kept_axes(p, letters, tuple(first.shape))
    layout = Layout(axes, shape, scales=[(s[0], s[1], s[2]) for s in scales])
    channels = (attrs.get("omero") or {}).get("channels") or []
    if len(channels) == layout.size("C"):
        layout.channels = [_omero_channel(c) for c in channels]
    return layout


def _dataset_scale(dataset: dict[str, Any], node: Any, first_shape: tuple[int, ...]) -> np.ndarray:
    """A level's scale transform; from its shape against level 0 when it has none."""
    for t in dataset.get("coordinateTransformations") or []:
        if t.get("type") == "scale" and "scale" in t:
            return np.asarray(t["scale"], dtype=float)
    shape = node[dataset["path"]].shape
    return np.asarray(first_shape, dtype=float) / np.maximum(np.asarray(shape, dtype=float), 1)


def _omero_channel(meta: dict[str, Any]) -> Channel:
    window = meta.get("window") or {}
    color = str(meta.get("color") or "")
    try:
        lut = Channel.lut_of(color) if len(color) == 6 else None
    except ValueError:  # not a hex colour: shown in grey
        lut = None
    display = (float(window["start"]), float(window["end"])) if {"start", "end"} <= set(window) else None
    return Channel(name=meta.get("label"), display_range=display, lut=lut)
