"""Synthetic confocal z-stacks of a shoot apical meristem with known depth-dependent degradation.

Real SAM stacks cannot be downloaded, so we build our own: a layered (L1/L2/corpus) dome of
Voronoi cells whose thin membranes are imaged through a Gaussian PSF that widens with depth, a
scattering halo, exponential attenuation and camera noise. The true per-slice parameters are
returned so that the degradation estimator can be tested against them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm import tqdm

from dqlr.atomic import refuse_existing, write_text
from dqlr.errors import DqlrError

LAYER_UM = 5.0  # thickness of the L1 and L2 cell layers
LAYER_SPACING_UM = 4.5  # minimum seed distance inside L1 and L2 (gives ~6 µm wide cells)
CORPUS_SPACING_UM = 5.0  # minimum seed distance in the corpus
BRIGHTNESS_SIGMA = 0.3  # lognormal sigma of the per-cell membrane brightness
CYTO_FRACTION = 0.04  # cytoplasm signal relative to a membrane
BACKGROUND_VARIATION = 0.3  # relative amplitude of the smooth background variation
BACKGROUND_NODE_UM = 16.0  # spacing of the coarse grid the smooth background is drawn on
FAR_UM = 1.0e5  # dummy seeds this far away never own a voxel nor make a wall


@dataclass
class Optics:
    """Physical imaging parameters; the defaults resemble a confocal SAM membrane stack."""

    psf_xy_top_um: float = 0.25
    psf_xy_deep_um: float = 0.9
    psf_z_top_um: float = 0.8
    psf_z_deep_um: float = 2.5
    psf_growth: float = 1.5
    halo_fraction_deep: float = 0.35
    halo_sigma_um: float = 4.0
    attenuation_length_um: float = 40.0
    photons_top: float = 120.0
    gain: float = 8.0
    read_noise_adu: float = 12.0
    offset_adu: float = 100.0
    background_photons: float = 2.0


@dataclass
class SimulatedPlant:
    """One simulated stack, its clean reference, its cells and the true degradation by depth.

    observed/clean: ZYX in ADU (offset + gain * photons); clean has the top-slice PSF everywhere
    and no attenuation, halo or noise. labels: cell ids, 0 outside the tissue. truth: per-slice
    arrays depth_um, psf_xy_um, psf_z_um (Gaussian sigmas), halo_fraction, attenuation,
    background_photons, and 0-d arrays gain, read_noise_adu, offset_adu, photons_top,
    halo_sigma_um, noise, degradation.
    """

    observed: np.ndarray
    clean: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[float, float, float]
    truth: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Layer:
    """Voronoi seeds (µm, ZYX) of one cell layer; ids are offset + index + 1."""

    seeds: np.ndarray
    tree: cKDTree
    offset: int


@dataclass
class _Tissue:
    """A capsule-shaped meristem (dome on a cylinder) filled with layered Voronoi cells."""

    zc: float  # depth of the dome's sphere centre (µm)
    cy: float
    cx: float
    radius: float
    layers: list[_Layer]
    brightness: np.ndarray  # per cell id (index 0 unused)
    layer_um: float = LAYER_UM  # thickness of L1 and L2 (scales with the cell size)

    def depth_below_surface(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Signed distance (µm) inwards from the outer surface; negative outside the tissue."""
        dz = np.minimum(z - self.zc, 0.0)
        return np.asarray(self.radius - np.sqrt((y - self.cy) ** 2 + (x - self.cx) ** 2 + dz * dz))


def _default_optics(dtype: str) -> Optics:
    """Default optics; 8-bit output gets a 10x lower gain/offset/read noise so it does not clip."""
    try:
        small = np.dtype(dtype).itemsize == 1
    except TypeError:
        small = False
    if small:
        return Optics(gain=0.8, read_noise_adu=1.2, offset_adu=10.0)
    return Optics()


def _number(name: str, value: float, low: float = 0.0, allow_low: bool = True) -> float:
    """A finite float >= low (or > low), else a one-line DqlrError that names the parameter."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x < low or (x == low and not allow_low):
        op = ">=" if allow_low else ">"
        raise DqlrError(f"{name} must be a finite number {op} {low:g}, got {value!r}")
    return x


def _check_params(
    shape: tuple[int, int, int], voxel_size: tuple[float, float, float], optics: Optics, dtype: str
) -> tuple[tuple[int, int, int], tuple[float, float, float], np.dtype]:
    """Fail early, before any work, with a message that names the bad parameter."""
    try:
        shape_t = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise DqlrError(f"shape must be three integers (Z, Y, X), got {shape!r}") from None
    if len(shape_t) != 3 or shape_t[0] < 3 or min(shape_t[1:]) < 8:
        raise DqlrError(f"shape must be (Z, Y, X) with Z >= 3 slices and Y, X >= 8, got {shape!r}")
    try:
        n_vox = len(voxel_size)
    except TypeError:
        n_vox = 0
    if n_vox != 3:
        raise DqlrError(f"voxel_size must be three numbers (z, y, x) in µm, got {voxel_size!r}")
    vz, vy, vx = (_number("voxel_size", v, allow_low=False) for v in voxel_size)
    vox = (vz, vy, vx)
    may_be_zero = ("read_noise_adu", "offset_adu", "background_photons", "halo_fraction_deep")
    for name, value in asdict(optics).items():
        _number(f"optics.{name}", value, allow_low=name in may_be_zero)
    if optics.halo_fraction_deep >= 1:
        raise DqlrError(f"optics.halo_fraction_deep must be < 1, got {optics.halo_fraction_deep}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DqlrError(f"dtype must be a numpy integer or float type, got {dtype!r}") from None
    if dt.kind not in "uif":
        raise DqlrError(f"dtype must be a numpy integer or float type, got {dtype!r}")
    return shape_t, vox, dt


def _dart_throw(candidates: np.ndarray, min_dist: float) -> np.ndarray:
    """Keep candidates in order unless closer than min_dist to one kept (Poisson-disk-like)."""
    kept = np.empty_like(candidates)
    n = 0
    d2 = min_dist * min_dist
    for p in candidates:
        if n == 0 or np.min(np.sum((kept[:n] - p) ** 2, axis=1)) >= d2:
            kept[n] = p
            n += 1
    return kept[:n].copy()


def _in_box(p: np.ndarray, hi: np.ndarray, margin: float) -> np.ndarray:
    """Which points lie in the stack's bounding box (µm) grown by margin."""
    return np.asarray(np.all((p >= -margin) & (p <= hi + margin), axis=1))


def _shell_seeds(
    rng: np.random.Generator,
    zc: float,
    cy: float,
    cx: float,
    radius: float,
    hi: np.ndarray,
    spacing: float = LAYER_SPACING_UM,
) -> np.ndarray:
    """Seeds on the capsule surface of the given radius, spaced like a cell layer."""
    if radius <= 0.5 * spacing:  # a tiny dome has no room for this layer
        return np.empty((0, 3))
    zmax = hi[0] + spacing
    cap_area = 2 * math.pi * radius**2
    cyl_area = 2 * math.pi * radius * max(zmax - zc, 0.0)
    n = int(8 * (cap_area + cyl_area) / spacing**2) + 16
    n_cap = rng.binomial(n, cap_area / (cap_area + cyl_area))
    u = rng.normal(size=(n_cap, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    u[:, 0] = -np.abs(u[:, 0])  # upper hemisphere: towards the top of the stack
    cap = np.array([zc, cy, cx]) + radius * u
    phi = rng.uniform(0, 2 * math.pi, n - n_cap)
    zs = rng.uniform(zc, max(zmax, zc), n - n_cap)
    cyl = np.stack([zs, cy + radius * np.sin(phi), cx + radius * np.cos(phi)], axis=1)
    cand = np.concatenate([cap, cyl])
    cand = cand[rng.permutation(len(cand))]
    cand = cand[_in_box(cand, hi, spacing)]
    return _dart_throw(cand, spacing)


def _make_layer(seeds: np.ndarray, offset: int) -> _Layer:
    """Pad to 3 seeds with far dummies so k=3 queries always work, then index."""
    if len(seeds) < 3:
        far = FAR_UM * np.eye(3)[: 3 - len(seeds)]
        seeds = np.concatenate([seeds.reshape(-1, 3), far])
    return _Layer(seeds=seeds, tree=cKDTree(seeds), offset=offset)


def _make_tissue(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    vox: tuple[float, float, float],
    cell_size: float = 1.0,
) -> _Tissue:
    """Random dome geometry and layered Voronoi seeds (all in µm); cell_size scales the cells."""
    layer_um, spacing, m = LAYER_UM * cell_size, LAYER_SPACING_UM * cell_size, CORPUS_SPACING_UM * cell_size
    hi = (np.array(shape) - 1) * np.array(vox)  # far corner of the stack, µm
    width = max(shape[1] * vox[1], shape[2] * vox[2])
    cy = hi[1] / 2 + rng.uniform(-0.05, 0.05) * shape[1] * vox[1]
    cx = hi[2] / 2 + rng.uniform(-0.05, 0.05) * shape[2] * vox[2]
    z_apex = rng.uniform(1.0, 3.0)
    radius = rng.uniform(0.6, 0.9) * width
    zc = z_apex + radius
    l1 = _shell_seeds(rng, zc, cy, cx, radius - 0.5 * layer_um, hi, spacing)
    l2 = _shell_seeds(rng, zc, cy, cx, radius - 1.5 * layer_um, hi, spacing)
    # corpus: random 3-D points well below the L2 layer
    box = np.prod(hi + 2 * m)
    cand = rng.uniform(size=(int(8 * box / m**3) + 16, 3)) * (hi + 2 * m) - m
    dz = np.minimum(cand[:, 0] - zc, 0.0)
    depth = radius - np.sqrt((cand[:, 1] - cy) ** 2 + (cand[:, 2] - cx) ** 2 + dz * dz)
    corpus = _dart_throw(cand[depth >= 2 * layer_um + 2.0], m)
    layers = []
    offset = 0
    for seeds in (l1, l2, corpus):
        layer = _make_layer(seeds, offset)
        layers.append(layer)
        offset += len(layer.seeds)
    brightness = np.concatenate([[1.0], rng.lognormal(0.0, BRIGHTNESS_SIGMA, offset)])
    return _Tissue(zc, cy, cx, radius, layers, brightness, layer_um)


def _profile(d: np.ndarray, sigma: float, thickness: float) -> np.ndarray:
    """Gaussian wall profile whose integral across the wall equals the wall thickness."""
    return (thickness / (math.sqrt(2 * math.pi) * sigma)) * np.exp(-0.5 * (d / sigma) ** 2)


def _emission_slice(
    tissue: _Tissue,
    z_um: float,
    yy: np.ndarray,
    xx: np.ndarray,
    vz: float,
    nsub: int,
    sigma: float,
    thickness: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Membrane occupancy, cytoplasm brightness and cell ids of one slice (flat over YX).

    Averaging nsub sub-planes integrates over the slice thickness, so walls that cross the slice
    obliquely become wider, fainter bands and walls parallel to it faint sheets.
    """
    npix = yy.size
    offsets = ((np.arange(nsub) + 0.5) / nsub - 0.5) * vz
    z = np.repeat(z_um + offsets, npix)
    y = np.tile(yy, nsub)
    x = np.tile(xx, nsub)
    ds = tissue.depth_below_surface(z, y, x)
    membrane = np.zeros(z.size)
    cyto = np.zeros(z.size)
    cell = np.zeros(z.size, dtype=np.int64)
    near = ds > -5 * sigma  # the outer wall also shines just outside the tissue
    layer = tissue.layer_um
    layer_of = np.digitize(ds, [layer, 2 * layer])
    interfaces = ((0.0, layer), (layer, 2 * layer), (2 * layer,))
    for k, cells in enumerate(tissue.layers):
        sel = np.flatnonzero(near & (layer_of == k))
        if sel.size == 0:
            continue
        pts = np.stack([z[sel], y[sel], x[sel]], axis=1)
        dist, idx = cells.tree.query(pts, k=3, workers=-1)
        gid = idx + cells.offset + 1
        b = tissue.brightness[gid]
        d_in = ds[sel]
        inside = d_in >= 0
        val = np.zeros(sel.size)
        for j in (1, 2):
            # exact distance to the bisector plane between the nearest and the j-th seed
            sep = np.linalg.norm(cells.seeds[idx[:, j]] - cells.seeds[idx[:, 0]], axis=1)
            d_wall = (dist[:, j] ** 2 - dist[:, 0] ** 2) / (2 * sep)
            v = _profile(d_wall, sigma, thickness) * 0.5 * (b[:, 0] + b[:, j])
            val = np.maximum(val, np.where(inside, v, 0.0))
        for level in interfaces[k]:
            val = np.maximum(val, _profile(d_in - level, sigma, thickness) * b[:, 0])
        membrane[sel] = val
        cyto[sel] = np.where(inside, b[:, 0], 0.0)
        cell[sel] = np.where(inside, gid[:, 0], 0)
    membrane = membrane.reshape(nsub, npix).mean(axis=0)
    cyto = cyto.reshape(nsub, npix).mean(axis=0)
    return membrane, cyto, cell.reshape(nsub, npix)[nsub // 2]


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Map plane indices into [0, n) by mirroring at the edges (d c b a | a b c d | d c b a)."""
    idx = np.mod(idx, 2 * n)
    return np.where(idx >= n, 2 * n - 1 - idx, idx)


def _blur_slice(
    emission: np.ndarray, z: int, sigma_z_planes: float, sigma_yx_px: tuple[float, float]
) -> np.ndarray:
    """Gaussian PSF for output slice z: weighted sum over planes, then lateral Gaussian."""
    r = max(1, math.ceil(3 * sigma_z_planes))
    k = np.arange(-r, r + 1)
    w = np.exp(-0.5 * (k / max(sigma_z_planes, 1e-6)) ** 2)
    w /= w.sum()
    acc = np.zeros(emission.shape[1:])
    for wi, plane in zip(w, _reflect(z + k, emission.shape[0]), strict=True):
        if wi > 1e-8:
            acc += wi * emission[plane]
    return np.asarray(ndimage.gaussian_filter(acc, sigma_yx_px))


def _interp_matrix(n_out: int, n_nodes: int) -> np.ndarray:
    """Linear interpolation weights from n_nodes evenly spread nodes to n_out samples."""
    t = np.linspace(0.0, n_nodes - 1.0, n_out)
    eye = np.eye(n_nodes)
    return np.stack([np.interp(t, np.arange(n_nodes), eye[j]) for j in range(n_nodes)], axis=1)


def _to_dtype(data: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Round and clip to the integer range like a camera would; floats are just cast."""
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return np.asarray(np.clip(np.rint(data), info.min, info.max).astype(dt))
    return data.astype(dt)


def simulate_plant(
    shape: tuple[int, int, int] = (48, 256, 256),
    voxel_size: tuple[float, float, float] = (1.0, 0.25, 0.25),
    seed: int = 0,
    noise: float = 1.0,
    degradation: float = 1.0,
    optics: Optics | None = None,
    dtype: str = "uint16",
    wall_thickness_um: float = 0.2,
    cell_size: float = 1.0,
    focus_um: float = 0.0,
) -> SimulatedPlant:
    """Simulate one SAM membrane stack, its clean reference and the true degradation by depth.

    noise scales the noise level (shot noise as if photons were divided by noise**2, read noise
    times noise) while keeping the mean ADU image fixed; noise=0 gives the expected image.
    degradation scales every depth-dependent effect; 0 makes observed equal clean up to noise.
    cell_size scales the cells and their layers (1: SAM-like cells about 6 µm wide). focus_um is
    the depth of the sharpest slice: the degradation grows with the distance from it (0: the top).
    truth["gain"] is the effective ADU per detected photon (gain * noise**2), which is what a
    photon-transfer estimate on the stack measures.
    """
    if optics is None:
        optics = _default_optics(dtype)
    shape, vox, dt = _check_params(shape, voxel_size, optics, dtype)
    noise = _number("noise", noise)
    degradation = _number("degradation", degradation)
    t = _number("wall_thickness_um", wall_thickness_um, allow_low=False)
    cell_size = _number("cell_size", cell_size, allow_low=False)
    focus_um = _number("focus_um", focus_um)
    rng = np.random.default_rng(seed)
    tissue = _make_tissue(rng, shape, vox, cell_size)
    n_z, n_y, n_x = shape
    vz, vy, vx = vox

    # tissue -> emission E (expected photons before optics)
    sigma_p = math.sqrt((t / 2.355) ** 2 + (vy * vy + vx * vx) / 24.0)
    nsub = min(31, max(5, math.ceil(vz / (1.8 * sigma_p))))
    nsub += 1 - nsub % 2  # odd, so the middle sub-plane is the voxel centre (labels)
    # a wall perpendicular to the slice, blurred by the top PSF, peaks at photons_top
    peak_ref = t / (math.sqrt(2 * math.pi) * math.hypot(sigma_p, optics.psf_xy_top_um))
    yy, xx = np.meshgrid(np.arange(n_y) * vy, np.arange(n_x) * vx, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    emission = np.empty(shape, dtype=np.float32)
    labels = np.empty(shape, dtype=np.int64)
    for z in range(n_z):
        memb, cyto, lab = _emission_slice(tissue, z * vz, yy, xx, vz, nsub, sigma_p, t)
        emission[z] = (optics.photons_top * (memb / peak_ref + CYTO_FRACTION * cyto)).reshape(n_y, n_x)
        labels[z] = lab.reshape(n_y, n_x)
    label_dtype = np.uint16 if labels.max() < 2**16 else np.uint32
    depth = np.abs(np.arange(n_z) * vz - focus_um)
    if depth.max() <= 0:
        raise DqlrError(f"focus_um {focus_um:g} leaves no slice away from the focus")
    observed, clean, truth = _image(emission, vox, rng, noise, degradation, optics, depth, dt)
    return SimulatedPlant(observed, clean, labels.astype(label_dtype), vox, truth)


def image_emission(
    emission: np.ndarray,
    voxel_size: tuple[float, float, float] = (1.0, 0.25, 0.25),
    seed: int = 0,
    noise: float = 1.0,
    degradation: float = 1.0,
    optics: Optics | None = None,
    dtype: str = "uint16",
    depth_um: np.ndarray | None = None,
) -> SimulatedPlant:
    """Image any structure through the simulator's optics and camera: a stack we did not model.

    `emission` (Z, Y, X) is the relative brightness of the sample (1: a membrane seen edge-on);
    `depth_um` (Z,) is how deep each slice lies below the sharp focus (default: its z position, so
    the top is sharp). Slices with depth 0 are imaged like the top slice; the one deepest gets the
    full depth degradation of `optics`. labels are all 0 (there are no cells to name).
    """
    if optics is None:
        optics = _default_optics(dtype)
    data = np.asarray(emission, np.float32)
    if data.ndim != 3 or not np.isfinite(data).all() or data.min() < 0:
        raise DqlrError("emission must be a finite, non-negative (Z, Y, X) array")
    shape, vox, dt = _check_params(data.shape, voxel_size, optics, dtype)
    depth = np.arange(shape[0]) * vox[0] if depth_um is None else np.asarray(depth_um, np.float64)
    if depth.shape != (shape[0],) or not np.isfinite(depth).all() or depth.min() < 0 or depth.max() <= 0:
        raise DqlrError(f"depth_um must be {shape[0]} finite depths >= 0, not all 0")
    rng = np.random.default_rng(seed)
    observed, clean, truth = _image(
        data * np.float32(optics.photons_top),
        vox,
        rng,
        _number("noise", noise),
        _number("degradation", degradation),
        optics,
        depth,
        dt,
    )
    return SimulatedPlant(observed, clean, np.zeros(shape, np.uint16), vox, truth)


def _image(
    emission: np.ndarray,
    vox: tuple[float, float, float],
    rng: np.random.Generator,
    noise: float,
    degradation: float,
    optics: Optics,
    depth: np.ndarray,
    dt: np.dtype,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Optics and camera: (observed, clean, truth), in ADU and the dtype `dt`, for emission (photons)
    and slice depths."""
    shape = emission.shape
    n_z = shape[0]
    vz, vy, vx = vox

    # true degradation by depth
    frac = (depth / depth.max()) ** optics.psf_growth * degradation
    psf_xy = optics.psf_xy_top_um + (optics.psf_xy_deep_um - optics.psf_xy_top_um) * frac
    psf_z = optics.psf_z_top_um + (optics.psf_z_deep_um - optics.psf_z_top_um) * frac
    halo = np.clip(optics.halo_fraction_deep * frac, 0.0, 0.95)
    attenuation = np.exp(-degradation * depth / optics.attenuation_length_um)

    # smooth background (stray light), added after the optics
    nodes = [max(2, math.ceil(n * v / BACKGROUND_NODE_UM) + 1) for n, v in zip(shape, vox, strict=True)]
    grid = 1.0 + BACKGROUND_VARIATION * rng.uniform(-1.0, 1.0, size=nodes)
    wz, wy, wx = (_interp_matrix(n, m) for n, m in zip(shape, nodes, strict=True))

    expected = np.empty(shape)
    clean = np.empty(shape)
    background = np.empty(n_z)
    top_px = (optics.psf_xy_top_um / vy, optics.psf_xy_top_um / vx)
    halo_px = (optics.halo_sigma_um / vy, optics.halo_sigma_um / vx)
    for z in range(n_z):
        bg = optics.background_photons * (wy @ np.tensordot(wz[z], grid, axes=1) @ wx.T)
        background[z] = bg.mean()
        sharp = _blur_slice(emission, z, optics.psf_z_top_um / vz, top_px)
        clean[z] = sharp + bg
        if degradation == 0:
            expected[z] = clean[z]
            continue
        blurred = _blur_slice(emission, z, psf_z[z] / vz, (psf_xy[z] / vy, psf_xy[z] / vx))
        if halo[z] > 0:
            wide = ndimage.gaussian_filter(blurred, halo_px)
            blurred = (1.0 - halo[z]) * blurred + halo[z] * wide
        expected[z] = attenuation[z] * blurred + bg

    # camera: shot noise on photons, gain, offset, read noise
    if noise > 0:
        scale = noise * noise
        photons = rng.poisson(expected / scale) * scale
        observed = (
            optics.offset_adu
            + optics.gain * photons
            + rng.normal(0.0, optics.read_noise_adu * noise, size=shape)
        )
    else:
        observed = optics.offset_adu + optics.gain * expected
    clean = optics.offset_adu + optics.gain * clean

    truth = {
        "depth_um": depth,
        "psf_xy_um": psf_xy,
        "psf_z_um": psf_z,
        "halo_fraction": halo,
        "attenuation": attenuation,
        "background_photons": background,
        "gain": np.asarray(optics.gain * noise * noise),
        "read_noise_adu": np.asarray(optics.read_noise_adu * noise),
        "offset_adu": np.asarray(optics.offset_adu),
        "photons_top": np.asarray(optics.photons_top / (noise * noise) if noise > 0 else np.inf),
        "halo_sigma_um": np.asarray(optics.halo_sigma_um),
        "noise": np.asarray(float(noise)),
        "degradation": np.asarray(float(degradation)),
    }
    return _to_dtype(observed, dt), _to_dtype(clean, dt), truth


def _split(names: list[str]) -> dict[str, list[str]]:
    """Last plant -> test, second last -> val (from 3 plants on), the rest -> train."""
    if len(names) == 1:
        return {"train": names, "val": [], "test": []}
    if len(names) == 2:
        return {"train": names[:1], "val": [], "test": names[1:]}
    return {"train": names[:-2], "val": names[-2:-1], "test": names[-1:]}


def _json_value(value: np.ndarray) -> object:
    """JSON-safe list or number; non-finite values become null."""
    out = np.asarray(value, dtype=float).tolist()
    if isinstance(out, list):
        return [v if math.isfinite(v) else None for v in out]
    return out if math.isfinite(out) else None


def _write_json(path: Path, data: dict[str, Any], force: bool) -> Path:
    """Write JSON atomically (`dqlr.atomic`); refuse to overwrite without force."""
    refuse_existing(path, force)
    return write_text(path, json.dumps(data, indent=2) + "\n")


def simulate_dataset(
    out_dir: str | os.PathLike[str],
    plants: int = 6,
    shape: tuple[int, int, int] = (48, 256, 256),
    voxel_size: tuple[float, float, float] = (1.0, 0.25, 0.25),
    seed: int = 0,
    noise: float = 1.0,
    degradation: float = 1.0,
    dtype: str = "uint16",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write plants (plant{i:02d}_observed/clean/labels.tif, _truth.json) and split.json.

    Plant i uses seed + i. Returns the split ("train"/"val"/"test" lists of plant names, also
    under "split"), "files" (per plant name: paths of observed, clean, labels, truth) and
    "split_path". Nothing is written if any output exists and force is False.
    """
    from dqlr.io import write_stack

    if isinstance(plants, bool) or not isinstance(plants, int | np.integer) or plants < 1:
        raise DqlrError(f"plants must be a whole number >= 1, got {plants!r}")
    out = Path(out_dir)
    _check_params(shape, voxel_size, _default_optics(dtype), dtype)
    _number("noise", noise)
    _number("degradation", degradation)
    names = [f"plant{i:02d}" for i in range(plants)]
    files = {
        name: {
            kind: out / f"{name}_{kind}.{ext}"
            for kind, ext in (
                ("observed", "tif"),
                ("clean", "tif"),
                ("labels", "tif"),
                ("truth", "json"),
            )
        }
        for name in names
    }
    split_path = out / "split.json"
    for path in [p for f in files.values() for p in f.values()] + [split_path]:
        refuse_existing(path, force)
    for i, name in enumerate(tqdm(names, desc="simulate", unit="plant", disable=not progress)):
        plant = simulate_plant(
            shape=shape,
            voxel_size=voxel_size,
            seed=seed + i,
            noise=noise,
            degradation=degradation,
            dtype=dtype,
        )
        paths = files[name]
        for kind in ("observed", "clean", "labels"):
            write_stack(paths[kind], getattr(plant, kind), voxel_size=plant.voxel_size, force=force)
        truth = {key: _json_value(value) for key, value in plant.truth.items()}
        truth.update(seed=seed + i, shape=list(plant.observed.shape), voxel_size=list(plant.voxel_size))
        _write_json(paths["truth"], truth, force)
    split = _split(names)
    _write_json(split_path, split, force)
    return {
        **split,
        "split": split,
        "files": {name: {k: str(p) for k, p in f.items()} for name, f in files.items()},
        "split_path": str(split_path),
    }
