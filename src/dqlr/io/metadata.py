"""Voxel size and axis names from ImageJ, OME and NGFF metadata, converted to micrometres."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import tifffile

# Length units found in ImageJ, OME and NGFF metadata, in micrometres.
_UNIT_UM = {
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "um": 1.0,
    "\u00b5m": 1.0,
    "\u03bcm": 1.0,
    "\\u00b5m": 1.0,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "nm": 1e-3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "cm": 1e4,
    "meter": 1e6,
    "metre": 1e6,
    "m": 1e6,
    "inch": 25400.0,
    "angstrom": 1e-4,
    "\u00e5": 1e-4,
}
# TIFF ResolutionUnit tag values (2, 3 standard; 4, 5 written by some tools), in micrometres.
_RESUNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}
_NGFF_AXES = {"t": "T", "time": "T", "c": "C", "channel": "C", "z": "Z", "y": "Y", "x": "X"}


def tiff_info(tif: tifffile.TiffFile) -> str | None:
    """Free text kept with the stack: the OME image Description or ImageJ's (or tifffile's) Info."""
    if tif.is_ome and tif.ome_metadata:
        try:
            found = ET.fromstring(tif.ome_metadata).find(".//{*}Image/{*}Description")
        except ET.ParseError:
            return None
        return found.text if found is not None and found.text else None
    meta: dict[str, Any] = dict(tif.imagej_metadata or {})
    if not meta and tif.is_shaped and tif.shaped_metadata:
        meta = dict(tif.shaped_metadata[0])
    info = meta.get("Info")
    return str(info) if info else None


def tiff_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
    """Voxel size in µm from OME PhysicalSize*, or ImageJ spacing plus resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        return _ome_voxel_size(tif.ome_metadata)
    page = tif.pages.first
    meta: dict[str, Any] = dict(tif.imagej_metadata or {})
    if not meta and tif.is_shaped and tif.shaped_metadata:
        meta = dict(tif.shaped_metadata[0])
    unit = meta.get("unit")
    scale = _UNIT_UM.get(str(unit).strip().lower()) if unit else _RESUNIT_UM.get(int(page.resolutionunit))
    spacing = meta.get("spacing")
    try:
        x_res, y_res = (float(r) for r in page.resolution)
    except (TypeError, ValueError):
        return None
    if scale is None or spacing is None or x_res <= 0 or y_res <= 0:
        return None
    return (float(spacing) * scale, scale / y_res, scale / x_res)


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    """PhysicalSize{Z,Y,X} of the first OME Pixels element; None if any size or unit is unknown."""
    pixels = next((e for e in ET.fromstring(xml).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    sizes = []
    for axis in "ZYX":
        value = pixels.get(f"PhysicalSize{axis}")
        scale = _UNIT_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm").strip().lower())
        if value is None or scale is None:
            return None
        sizes.append(float(value) * scale)
    return (sizes[0], sizes[1], sizes[2])


def ngff_axes(axes_meta: list) -> str:
    """NGFF or xarray axis names as TCZYX letters; unknown names become Q so they are caught."""
    names = [a.get("name", "") if isinstance(a, dict) else str(a) for a in axes_meta]
    return "".join(_NGFF_AXES.get(n.lower(), "Q") for n in names)


def ngff_voxel_size(
    meta: dict, dataset: dict, axes_meta: list | None, axes: str
) -> tuple[float, float, float] | None:
    """Scale of z, y, x from dataset and multiscale transforms, in µm; None without units."""
    scale = np.ones(len(axes))
    for transforms in (
        dataset.get("coordinateTransformations"),
        meta.get("coordinateTransformations"),
    ):
        for t in transforms or []:
            if t.get("type") == "scale" and "scale" in t:
                scale = scale * np.asarray(t["scale"], dtype=float)
    if not axes_meta or any(not isinstance(a, dict) for a in axes_meta):
        return None
    sizes = []
    for axis in "ZYX":
        if axes.count(axis) != 1:
            return None
        i = axes.index(axis)
        unit_um = _UNIT_UM.get(str(axes_meta[i].get("unit", "")).lower())
        if unit_um is None:
            return None
        sizes.append(float(scale[i]) * unit_um)
    return (sizes[0], sizes[1], sizes[2])
