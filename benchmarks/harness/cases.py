"""Stacks our SAM simulator does not make: other structures, pixel sizes, focus and orientation.

Each case is a degraded stack, its clean reference and the true blur per slice, so a method can be
scored on the slices that are most degraded whichever end they are at. Structures other than SAM
cells (nuclei, a regular wall grid) are drawn here and imaged through the same optics and camera
(`dqlr.simulation.image_emission`); the rest are SAM plants with one thing changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from dqlr.simulation import SimulatedPlant, image_emission, simulate_plant

SHAPE = (32, 192, 192)
VOXEL = (1.0, 0.25, 0.25)


@dataclass
class Case:
    name: str
    what: str
    observed: np.ndarray
    clean: np.ndarray
    voxel_size: tuple[float, float, float]
    blur_um: np.ndarray  # true lateral PSF sigma per slice

    def worst_third(self) -> np.ndarray:
        """The most degraded third of the slices (the deepest third when the top is sharp)."""
        count = len(np.array_split(np.arange(len(self.blur_um)), 3)[2])
        return np.sort(np.argsort(self.blur_um, kind="stable")[-count:])


def _case(name: str, what: str, plant: SimulatedPlant, flip: bool = False) -> Case:
    turn = slice(None, None, -1) if flip else slice(None)
    return Case(
        name,
        what,
        plant.observed[turn],
        plant.clean[turn],
        plant.voxel_size,
        np.asarray(plant.truth["psf_xy_um"])[turn],
    )


def nuclei_emission(shape: tuple[int, int, int], voxel: tuple[float, ...], seed: int) -> np.ndarray:
    """Filled, textured ellipsoidal nuclei (4-7 µm across) packed loosely: blobs, no walls."""
    rng = np.random.default_rng(seed)
    size = np.array(shape) * np.array(voxel)
    count = int(np.prod(size) / 6.5**3 * 1.2)
    centres = rng.uniform(0, 1, (count, 3)) * size
    radii = rng.uniform(2.0, 3.5, (count, 3))
    bright = rng.lognormal(0.0, 0.3, count)
    grid = np.stack(
        np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, voxel, strict=True)], indexing="ij"), -1
    )
    points = grid.reshape(-1, 3)
    _, nearest = cKDTree(centres).query(points, k=3)
    inside = np.zeros(len(points))
    for k in range(3):
        idx = nearest[:, k]
        r = np.sqrt((((points - centres[idx]) / radii[idx]) ** 2).sum(1))
        inside = np.maximum(inside, bright[idx] / (1 + np.exp((r - 1.0) / 0.08)))
    texture = ndimage.gaussian_filter(rng.normal(size=shape), (0.5, 3.0, 3.0))
    texture = 0.75 + 0.25 * texture / texture.std()
    return np.clip(0.6 * inside.reshape(shape) * texture, 0, None).astype(np.float32)


def grid_emission(
    shape: tuple[int, int, int], voxel: tuple[float, ...], period_um: float = 5.0
) -> np.ndarray:
    """A dense regular wall grid (walls every period_um in y and x, floors every period_um in z)."""
    z, y, x = (np.arange(n) * v for n, v in zip(shape, voxel, strict=True))

    def walls(coord: np.ndarray, width: float) -> np.ndarray:
        d = np.abs((coord + period_um / 2) % period_um - period_um / 2)
        return np.exp(-0.5 * (d / width) ** 2)

    lateral = max(voxel[1], 0.12)
    wall_y, wall_x = walls(y, lateral)[:, None], walls(x, lateral)[None, :]
    plane = np.maximum(wall_y, wall_x)
    floors = 0.3 * walls(z, 0.4)
    return (np.maximum(plane[None], floors[:, None, None]) + 0.04).astype(np.float32)


def cases(seed: int = 7) -> list[Case]:
    """The out-of-domain cases of benchmarks/out_of_domain.py (a few seconds each to simulate)."""
    middle = (SHAPE[0] // 2) * VOXEL[0]
    plant = simulate_plant(shape=SHAPE, voxel_size=VOXEL, seed=seed)
    return [
        _case(
            "nuclei",
            "textured nuclei instead of walls",
            image_emission(nuclei_emission(SHAPE, VOXEL, seed), VOXEL, seed),
        ),
        _case(
            "large cells",
            "SAM cells 3x larger",
            simulate_plant(shape=SHAPE, voxel_size=VOXEL, seed=seed, cell_size=3.0),
        ),
        _case(
            "0.1 µm pixels",
            "SAM at 0.1 µm pixels",
            simulate_plant(shape=(32, 320, 320), voxel_size=(1.0, 0.1, 0.1), seed=seed),
        ),
        _case(
            "0.5 µm pixels",
            "SAM at 0.5 µm pixels",
            simulate_plant(shape=(32, 128, 128), voxel_size=(1.0, 0.5, 0.5), seed=seed),
        ),
        _case(
            "focus in the middle",
            "sharpest in the middle slice, blurred towards both ends",
            simulate_plant(shape=SHAPE, voxel_size=VOXEL, seed=seed + 1, focus_um=middle),
        ),
        _case("bottom-up", "SAM stored with the sharp end at the bottom", plant, flip=True),
        _case(
            "near-empty top",
            "the demo plant (seed 2026): the dome cap fills little of the top slices",
            simulate_plant(seed=2026),
        ),
        _case(
            "wall grid",
            "a dense regular wall grid (5 µm)",
            image_emission(grid_emission(SHAPE, VOXEL), VOXEL, seed),
        ),
    ]
