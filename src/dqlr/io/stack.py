"""The stack types and the checks every input passes, shared by the readers and the writer.

Every problem with an input file becomes a one-line `DqlrError` that names the file and says what
to do, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dqlr.errors import DqlrError

PathLike = str | os.PathLike[str]

SUPPORTED = ".tif, .tiff, .ome.tif, .ome.tiff, .zarr"
MIN_SLICES = 3
MIN_SIDE = 16  # pixels per side: below this no tile or spectrum means anything


@dataclass
class Stack:
    """A z-stack in ZYX order with its voxel size, as read from one file."""

    data: np.ndarray | Any
    voxel_size: tuple[float, float, float] | None
    axes: str = "ZYX"
    path: str | None = None
    info: str | None = None  # free text stored with it (how dqlr made it, with its notes)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype).newbyteorder("=")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)


class LazyStack:
    """ZYX view of a lazily read array (zarr) that reads only the slices asked for.

    Channel and time point are fixed in `key`; indexing fills in the Z, Y and X entries.
    """

    ndim = 3

    def __init__(self, source: Any, key: tuple[Any, ...]) -> None:
        self._source = source
        self._key = key
        self._kept = [i for i, k in enumerate(key) if isinstance(k, slice)]
        self.shape = tuple(int(source.shape[i]) for i in self._kept)
        self.dtype = np.dtype(source.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item: Any) -> np.ndarray:
        items = item if isinstance(item, tuple) else (item,)
        if any(i is Ellipsis for i in items):
            at = next(n for n, i in enumerate(items) if i is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(items) + 1)
            items = items[:at] + fill + items[at + 1 :]
        if len(items) > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-D stack")
        items = items + (slice(None),) * (self.ndim - len(items))
        full = list(self._key)
        for pos, index in zip(self._kept, items, strict=True):
            full[pos] = index
        return np.asarray(self._source[tuple(full)])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __repr__(self) -> str:
        return f"LazyStack(shape={self.shape}, dtype={self.dtype})"


def resize(image: np.ndarray, shape: tuple[int, ...], anti_aliasing: bool) -> np.ndarray:
    """Linear resampling to `shape` (float32), low-passed first when shrinking."""
    from skimage.transform import resize

    out = resize(image, shape, order=1, anti_aliasing=anti_aliasing, preserve_range=True)  # type: ignore[no-untyped-call]
    return np.asarray(out, np.float32)


class StackView:
    """A ZYX stack computed slice by slice from another: a range of its slices, turned over in z
    and/or resized in XY.

    Lets a model see a stack the way it was trained (sharp end on top, its pixel size) without
    copying the stack; `restore_plane` maps a result slice back to the source's geometry.
    """

    ndim = 3

    def __init__(
        self, source: Any, flip: bool = False, zoom: float = 1.0, start: int = 0, stop: int | None = None
    ) -> None:
        self.source, self.flip, self.zoom = source, flip, zoom
        depth, height, width = (int(n) for n in source.shape)
        self.start, self.stop = start, depth if stop is None else stop  # the source slices shown
        if not 0 <= self.start < self.stop <= depth:
            raise ValueError(f"slices {start}:{stop} are not within a stack of {depth}")
        self.source_plane_shape = (height, width)
        if zoom != 1.0:
            height, width = max(round(height * zoom), 8), max(round(width * zoom), 8)
            self.dtype = np.dtype(np.float32)
        else:
            self.dtype = np.dtype(source.dtype)
        self.shape = (self.stop - self.start, height, width)

    def __len__(self) -> int:
        return self.shape[0]

    def at_own_pixels(self) -> StackView:
        """The same slices, turned over the same way, at the source's pixel size (no resizing)."""
        return StackView(self.source, self.flip, 1.0, self.start, self.stop)

    def source_index(self, z: int) -> int:
        """Slice of the source that slice z of the view shows."""
        return self.stop - 1 - z if self.flip else self.start + z

    def plane(self, z: int) -> np.ndarray:
        plane = np.asarray(self.source[self.source_index(z)])
        if self.zoom == 1.0:
            return plane
        smaller = self.zoom < 1.0  # low-pass before shrinking, or noise aliases into structure
        return resize(plane.astype(np.float32), self.shape[1:], smaller)

    def restore_plane(self, plane: np.ndarray) -> np.ndarray:
        """A result slice (or a stack of them along the first axis) back at the source's size."""
        if self.zoom == 1.0:
            return plane
        return resize(plane, plane.shape[:-2] + self.source_plane_shape, self.zoom > 1.0)

    def __getitem__(self, item: Any) -> np.ndarray:
        items = item if isinstance(item, tuple) else (item,)
        if items and items[0] is Ellipsis:
            items = (slice(None),) * (self.ndim - len(items) + 1) + items[1:]
        first, rest = (items[0], items[1:]) if items else (slice(None), ())
        if isinstance(first, int | np.integer):
            return self._read(range(self.shape[0])[int(first)], rest)
        return np.stack([self._read(z, rest) for z in range(self.shape[0])[first]])

    def _read(self, z: int, rest: tuple[Any, ...]) -> np.ndarray:
        """Slice z, or the part `rest` of it, holding no more than that part: a crop of every
        slice of a 64 x 4096 x 4096 volume must not keep the whole slices alive (2 GiB)."""
        if self.zoom == 1.0 and rest:  # read only the part asked for (e.g. a block task's box)
            return np.asarray(self.source[(self.source_index(z), *rest)])
        plane = self.plane(z)
        return plane[rest].copy() if rest else plane

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)


def stack_format(path: PathLike) -> str:
    """Format from the file name: "tiff", "ome-tiff" or "zarr"."""
    name = Path(path).name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        return "ome-tiff"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".zarr"):
        return "zarr"
    raise DqlrError(f"{path}: unsupported file type; use one of {SUPPORTED}")


def looks_like_zarr(path: Path) -> bool:
    """A folder is a Zarr store only if it holds Zarr metadata; anything else is left alone."""
    return any((path / name).exists() for name in (".zgroup", ".zarray", "zarr.json"))


def check_finite(array: Any, path: PathLike | None, z: int | None = None) -> None:
    """Raise if float data holds NaN or Inf, which would poison the normalisation and network."""
    a = np.asarray(array)
    if a.dtype.kind != "f":
        return
    finite = np.isfinite(a)
    if finite.all():
        return
    n_nan = int(np.isnan(a).sum())
    n_inf = int(a.size - finite.sum()) - n_nan
    what = " and ".join(f"{n} {name}" for n, name in ((n_nan, "NaN"), (n_inf, "Inf")) if n > 0)
    if z is None and a.ndim == 3:
        z = int(np.argmax(~finite.reshape(a.shape[0], -1).all(axis=1)))
    where = f" (first in slice {z})" if z is not None else ""
    raise DqlrError(
        f"{path}: contains {what} values{where}; dqlr needs finite values, "
        "replace them (e.g. with 0 in Fiji: Process > Math > Remove NaNs)"
    )


def check_stack(data: Any, name: PathLike) -> None:
    """Everything an input must satisfy, checked before any estimate or model work: three
    dimensions, enough slices and pixels, a number type, and (floats) finite values."""
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    if len(shape) != 3:
        raise DqlrError(
            f"{name}: dqlr needs a 3-D ZYX stack, got shape {shape}; pick one with --channel/--timepoint"
        )
    if shape[0] < MIN_SLICES:
        raise DqlrError(f"{name}: has {shape[0]} slices; dqlr needs at least {MIN_SLICES}")
    if min(shape[1:]) < MIN_SIDE:
        raise DqlrError(
            f"{name}: slices of {shape[1]}x{shape[2]} pixels are too small; dqlr needs {MIN_SIDE}"
        )
    check_dtype(name, np.dtype(data.dtype))
    if np.dtype(data.dtype).kind == "f":
        for z in range(shape[0]):
            check_finite(data[z], name, z)


def check_dtype(p: PathLike, dtype: np.dtype) -> None:
    """Refuse bool, complex and other types that the normalisation and network cannot take."""
    if dtype.kind not in "uif":
        raise DqlrError(
            f"{p}: has data type {dtype}, which dqlr cannot process; "
            "convert it to 8-bit, 16-bit or 32-bit float (Fiji: Image > Type)"
        )


def plan_zyx(
    p: Path, letters: str, shape: tuple[int, ...], channel: int | None, timepoint: int | None
) -> tuple[Any, ...]:
    """Check the axes of a file and build the index that selects one ZYX stack from it."""
    axes = list(letters)
    if "Z" not in axes:
        # Plain multi-page TIFFs call their pages I or Q: those are the slices.
        generic = [i for i, a in enumerate(axes) if a in "IQ" and shape[i] > 1]
        if len(generic) == 1:
            axes[generic[0]] = "Z"
    if axes.count("Y") != 1 or axes.count("X") != 1 or axes.count("Z") > 1:
        raise DqlrError(f"{p}: has unsupported axes {''.join(axes)!r}; dqlr needs a ZYX stack")
    size = dict(zip(axes, shape, strict=True))
    extra = [a for a in axes if a not in "ZYXTCS" and size[a] > 1]
    if "Z" not in axes or size["Z"] == 1:
        if any(size.get(a, 1) > 1 for a in "TC") or extra:
            raise DqlrError(
                f"{p}: has no z axis (axes {''.join(axes)!r}); "
                f"dqlr needs a z-stack of at least {MIN_SLICES} slices"
            )
        raise DqlrError(f"{p}: is a single 2-D image; dqlr needs a z-stack of at least {MIN_SLICES} slices")
    if size["Z"] < MIN_SLICES:
        raise DqlrError(f"{p}: has only {size['Z']} slices; dqlr needs a z-stack of at least {MIN_SLICES}")
    if extra:
        raise DqlrError(
            f"{p}: has an extra axis {extra[0]!r} of size {size[extra[0]]} "
            f"(axes {''.join(axes)!r}); save a single ZYX stack"
        )
    if "".join(a for a in axes if a in "ZYX") != "ZYX":
        raise DqlrError(f"{p}: has axes {''.join(axes)!r} with Z after Y or X; save it as ZYX")
    n_time = size.get("T", 1)
    if timepoint is None and n_time > 1:
        raise DqlrError(
            f"{p}: is a time series with {n_time} time points; "
            f"pass --timepoint N (0-{n_time - 1}) to pick one"
        )
    if timepoint is not None and not 0 <= timepoint < n_time:
        raise DqlrError(
            f"{p}: has {n_time} time point(s), so --timepoint {timepoint} is out of range "
            f"(use 0-{n_time - 1})"
        )
    n_channels, n_samples = size.get("C", 1), size.get("S", 1)
    if n_channels > 1 and n_samples > 1:
        raise DqlrError(f"{p}: has both channels and RGB samples; save one channel as ZYX")
    if n_samples > 1 and channel is None:
        raise DqlrError(
            f"{p}: is an RGB image; dqlr needs a single-channel fluorescence stack: "
            f"pass --channel N (0-{n_samples - 1}) or split the channels in Fiji"
        )
    if n_channels > 1 and channel is None:
        raise DqlrError(f"{p}: has {n_channels} channels; pass --channel N (0-{n_channels - 1}) to pick one")
    n_pick = max(n_channels, n_samples)
    if channel not in (None, 0) and n_pick == 1:
        raise DqlrError(f"{p}: has only one channel; leave out --channel {channel}")
    if channel is not None and not 0 <= channel < n_pick:
        raise DqlrError(
            f"{p}: has {n_pick} channel(s), so --channel {channel} is out of range (use 0-{n_pick - 1})"
        )
    key: list[Any] = []
    for a in axes:
        if a in "ZYX":
            key.append(slice(None))
        elif a == "T":
            key.append(timepoint or 0)
        elif a in "CS":
            key.append(channel or 0)
        else:
            key.append(0)
    return tuple(key)
