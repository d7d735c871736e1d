"""What a depth degradation is: per-slice blur, halo, attenuation and background plus the camera.

A `DepthDegradation` is estimated once per stack (`estimate.py`), stored with trained models (its
numbers condition the depth-aware model) and turned into the parameters `degrade` takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from dqlr.errors import DqlrError

DEFAULT_PIXEL_UM = 0.25  # assumed lateral pixel size when the stack has no voxel size
HALO_SIGMA_UM = 4.0  # default width of the scattering halo (Gaussian sigma)
MAX_HALO = 0.95


@dataclass
class DepthDegradation:
    """Per-slice degradation relative to the reference (sharpest, upper) slices of one stack.

    blur_sigma_px: extra Gaussian sigma (pixels) on top of the reference blur, lateral and axial
    blur folded together; halo_fraction: share of the signal spread into a wide Gaussian of
    sigma halo_sigma_px; attenuation: signal scale (1 for the reference); background: per-slice
    dark level (offset plus stray light) in input units; gain (input units per photon),
    read_noise and offset: the camera noise model var = gain * (mean - offset) + read_noise**2.
    reference_slices: the half-open range [first, stop) of slices used as the sharp reference.
    notes: one short sentence per step that could not be measured and fell back to a default;
    reliable: False when the blur-by-depth curve could not be measured meaningfully (then a
    depth-aware model should not be conditioned on it); blur_sigma_px_error: standard error of
    blur_sigma_px (None in records made before it was estimated).
    """

    depth_index: np.ndarray
    blur_sigma_px: np.ndarray
    halo_fraction: np.ndarray
    attenuation: np.ndarray
    background: np.ndarray
    gain: float
    read_noise: float
    offset: float
    reference_slices: tuple[int, int]
    halo_sigma_px: float = HALO_SIGMA_UM / DEFAULT_PIXEL_UM
    notes: list[str] = field(default_factory=list)
    reliable: bool = True
    blur_sigma_px_error: np.ndarray | None = None

    @property
    def reference_background(self) -> float:
        first, stop = self.reference_slices
        return float(np.median(self.background[first:stop]))

    def relative(self, source: int, target: int) -> dict[str, float]:
        """Parameters that turn slice `source` into slice `target` (for `degrade`).

        Gaussian blurs add in quadrature, attenuations divide and the halo share composes as
        1 - (1 - h_target) / (1 - h_source), so a source slightly below the reference is not
        degraded twice.
        """
        s2 = float(self.blur_sigma_px[target]) ** 2 - float(self.blur_sigma_px[source]) ** 2
        keep = (1.0 - float(self.halo_fraction[target])) / (1.0 - float(self.halo_fraction[source]))
        return {
            "blur_sigma_px": math.sqrt(max(s2, 0.0)),
            "halo_fraction": float(np.clip(1.0 - keep, 0.0, MAX_HALO)),
            "halo_sigma_px": float(self.halo_sigma_px),
            "attenuation": float(self.attenuation[target] / max(self.attenuation[source], 1e-6)),
            "background": float(self.background[target]),
            "source_background": float(self.background[source]),
            "gain": float(self.gain),
            "read_noise": float(self.read_noise),
            "offset": float(self.offset),
        }

    def at(self, depth: int) -> dict[str, float]:
        """Parameters that turn a reference slice into slice `depth` (for `degrade`)."""
        params = self.relative(self.reference_slices[0], depth)
        params["source_background"] = self.reference_background
        return params

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                out[f.name] = value.tolist()
            elif isinstance(value, tuple):
                out[f.name] = [int(v) for v in value]
            elif isinstance(value, list):
                out[f.name] = [str(v) for v in value]
            elif value is None or isinstance(value, bool):
                out[f.name] = value
            else:
                out[f.name] = float(value)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DepthDegradation:
        try:
            return cls(
                depth_index=np.asarray(d["depth_index"], dtype=np.int64),
                blur_sigma_px=np.asarray(d["blur_sigma_px"], dtype=float),
                halo_fraction=np.asarray(d["halo_fraction"], dtype=float),
                attenuation=np.asarray(d["attenuation"], dtype=float),
                background=np.asarray(d["background"], dtype=float),
                gain=float(d["gain"]),
                read_noise=float(d["read_noise"]),
                offset=float(d["offset"]),
                reference_slices=(int(d["reference_slices"][0]), int(d["reference_slices"][1])),
                halo_sigma_px=float(d.get("halo_sigma_px", HALO_SIGMA_UM / DEFAULT_PIXEL_UM)),
                notes=[str(note) for note in d.get("notes", [])],
                reliable=bool(d.get("reliable", True)),
                blur_sigma_px_error=_optional_array(d.get("blur_sigma_px_error")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise DqlrError(f"invalid degradation record: {error}") from None


def _optional_array(value: Any) -> np.ndarray | None:
    """A float array, or None for records written before the field existed."""
    return None if value is None else np.asarray(value, dtype=float)
