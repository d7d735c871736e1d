"""Read and write ZYX z-stacks as TIFF (ImageJ), OME-TIFF and OME-Zarr.

Every problem with an input or output file becomes a one-line `DqlrError` that names the file and
says what to do, so the CLI can print it without a traceback. Outputs are written to a temporary
name next to the target and renamed into place, so a crash never leaves a half-written result
under the real name and an existing file is only replaced once the new one is complete.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from dqlr.errors import DqlrError

PathLike = str | os.PathLike

SUPPORTED = ".tif, .tiff, .ome.tif, .ome.tiff, .zarr"
MIN_SLICES = 3
# ImageJ hyperstacks hold only these; other dtypes go into a plain TIFF so they are kept exactly.
IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
ZARR_TILE = 1024

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
_CORRUPT_WORDS = ("corrupt", "truncat")


@dataclass
class Stack:
    """A z-stack in ZYX order with its voxel size, as read from one file."""

    data: np.ndarray | Any
    voxel_size: tuple[float, float, float] | None
    axes: str = "ZYX"
    path: str | None = None

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

    def __init__(self, source: Any, key: tuple) -> None:
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


# --------------------------------------------------------------------------------------- reading


def read_stack(
    path: PathLike,
    channel: int | None = None,
    timepoint: int | None = None,
    lazy: bool = False,
) -> Stack:
    """Read one single-channel z-stack as ZYX; lazy=True reads slices only when indexed."""
    p = Path(path)
    if not p.exists():
        raise DqlrError(f"{path}: file not found; check the path")
    fmt = stack_format(p)
    if p.is_file() and p.stat().st_size == 0:
        raise DqlrError(f"{path}: is empty (0 bytes); the file was not written completely")
    if fmt == "zarr":
        if p.is_dir() and not any(p.iterdir()):
            raise DqlrError(f"{path}: is an empty folder, not an OME-Zarr; check the path")
        if p.is_dir() and not _looks_like_zarr(p):
            raise DqlrError(
                f"{path}: is a folder without Zarr metadata (.zgroup, .zarray or zarr.json); check the path"
            )
        with _as_corrupt(path):
            return _read_zarr(p, channel, timepoint, lazy)
    if p.is_dir():
        raise DqlrError(f"{path}: is a folder, not a TIFF file; check the path")
    with _as_corrupt(path):
        return _read_tiff(p, channel, timepoint, lazy)


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


@contextmanager
def _as_corrupt(path: PathLike) -> Iterator[None]:
    """Turn any parser failure into a one-line error; our own DqlrErrors pass through."""
    try:
        yield
    except DqlrError:
        raise
    except MemoryError:
        raise
    except Exception as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise DqlrError(
            f"{path}: cannot be read, the file is corrupt or truncated ({reason}); export it again"
        ) from error


class _LogCollector(logging.Handler):
    """Collects tifffile's warnings: it logs, rather than raises, on cut-off files."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR or any(w in message.lower() for w in _CORRUPT_WORDS):
            self.problems.append(" ".join(message.split())[:160])


@contextmanager
def _tifffile_log() -> Iterator[_LogCollector]:
    logger = logging.getLogger("tifffile")
    collector = _LogCollector()
    logger.addHandler(collector)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)


def _read_tiff(p: Path, channel: int | None, timepoint: int | None, lazy: bool) -> Stack:
    with _tifffile_log() as log, tifffile.TiffFile(p) as tif:
        if not tif.series:
            raise DqlrError(f"{p}: contains no image data; export it again")
        series = tif.series[0]
        axes, shape, dtype = series.axes, tuple(series.shape), np.dtype(series.dtype)
        _check_tiff_complete(p, series, log.problems)
        voxel_size = _tiff_voxel_size(tif)
        key = _plan(p, axes, shape, channel, timepoint)
        _check_dtype(p, dtype)
        if lazy:
            data = _lazy_tiff(p, series, key)
        else:
            data = _owned(series.asarray(), key)
            _check_tiff_complete(p, series, log.problems)
    if not lazy:
        check_finite(data, p)
    return Stack(data, voxel_size, axes, str(p))


def _check_tiff_complete(p: Path, series: Any, problems: list[str]) -> None:
    """Make a cut-off TIFF fail instead of silently reading fewer slices or zeros."""
    if problems:
        raise DqlrError(f"{p}: is truncated or corrupt ({problems[0]}); export it again")
    size = p.stat().st_size
    if series.dataoffset is not None:
        end = series.dataoffset + series.nbytes
    else:
        end = 0
        for page in series.pages:
            if page is None:
                raise DqlrError(f"{p}: is truncated or corrupt (missing pages); export it again")
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                end = max(end, offset + count)
    if end > size:
        raise DqlrError(
            f"{p}: is truncated (image data needs {end} bytes, the file has {size}); copy or export it again"
        )


def _lazy_tiff(p: Path, series: Any, key: tuple) -> Any:
    """Memory-map uncompressed contiguous data; otherwise read pages on demand through zarr."""
    if series.dataoffset is not None:
        try:
            mapped = tifffile.memmap(p, series=0, mode="r")
        except ValueError:
            mapped = None
        if mapped is not None:
            return mapped.reshape(series.shape)[key]
    import zarr  # imported on first use: plain TIFF work never pays for it

    source = zarr.open_array(tifffile.imread(p, aszarr=True, series=0), mode="r")
    if all(isinstance(k, slice) for k in key):
        return source
    return LazyStack(source, key)


def _tiff_voxel_size(tif: tifffile.TiffFile) -> tuple[float, float, float] | None:
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


def _read_zarr(p: Path, channel: int | None, timepoint: int | None, lazy: bool) -> Stack:
    import zarr

    node = zarr.open(str(p), mode="r")
    voxel_size = None
    if isinstance(node, zarr.Array):
        array = node
        names = node.attrs.get("_ARRAY_DIMENSIONS")
        axes = (
            _ngff_axes(names)
            if names
            else {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(node.ndim, "Q" * node.ndim)
        )
    else:
        attrs = node.attrs.asdict()
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise DqlrError(
                f"{p}: is a Zarr group without OME-Zarr 'multiscales' metadata; "
                "point to the array inside it or export it as OME-Zarr"
            )
        meta = multiscales[0]
        dataset = meta["datasets"][0]
        array = node[dataset["path"]]
        axes_meta = meta.get("axes")
        axes = _ngff_axes(axes_meta) if axes_meta else "TCZYX"[-array.ndim :]
        voxel_size = _ngff_voxel_size(meta, dataset, axes_meta, axes)
    if len(axes) != array.ndim:
        raise DqlrError(f"{p}: axes metadata {axes!r} does not match the {array.ndim}-D array")
    key = _plan(p, axes, tuple(array.shape), channel, timepoint)
    _check_dtype(p, np.dtype(array.dtype))
    if lazy:
        data = array if all(isinstance(k, slice) for k in key) else LazyStack(array, key)
    else:
        data = _owned(array, key)
        check_finite(data, p)
    return Stack(data, voxel_size, axes, str(p))


def _ngff_axes(axes_meta: list) -> str:
    names = [a.get("name", "") if isinstance(a, dict) else str(a) for a in axes_meta]
    return "".join(_NGFF_AXES.get(n.lower(), "Q") for n in names)


def _ngff_voxel_size(
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


def _plan(p: Path, axes: str, shape: tuple[int, ...], channel: int | None, timepoint: int | None) -> tuple:
    """Check the axes of a file and build the index that selects one ZYX stack from it."""
    axes = list(axes)
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


def _check_dtype(p: PathLike, dtype: np.dtype) -> None:
    if dtype.kind not in "uif":
        raise DqlrError(
            f"{p}: has data type {dtype}, which dqlr cannot process; "
            "convert it to 8-bit, 16-bit or 32-bit float (Fiji: Image > Type)"
        )


def _owned(source: Any, key: tuple) -> np.ndarray:
    """Selected stack in native byte order, not a view that keeps every channel in memory."""
    data = np.asarray(source[key])
    if not data.dtype.isnative:
        return data.astype(data.dtype.newbyteorder("="))
    if data.base is not None and data.size < np.prod(source.shape):
        return data.copy()
    return data


# --------------------------------------------------------------------------------------- writing


def write_stack(
    path: PathLike,
    data: np.ndarray | Any,
    voxel_size: tuple[float, float, float] | None = None,
    force: bool = False,
    protect: Iterable[PathLike] = (),
) -> Path:
    """Write a ZYX stack atomically, keeping its dtype; reads lazy inputs slice by slice."""
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    if len(shape) != 3:
        raise DqlrError(f"{path}: cannot write data of shape {shape}; it must be a 3-D ZYX stack")
    with create_stack_writer(path, shape, data.dtype, voxel_size, force, protect) as writer:
        for z in range(shape[0]):
            writer[z] = np.asarray(data[z])
    return writer.path


def create_stack_writer(
    path: PathLike,
    shape: tuple[int, int, int],
    dtype: Any,
    voxel_size: tuple[float, float, float] | None = None,
    force: bool = False,
    protect: Iterable[PathLike] = (),
) -> StackWriter:
    """Open a writer that takes one slice at a time, for results larger than memory."""
    return StackWriter(path, shape, dtype, voxel_size, force, protect)


class StackWriter:
    """Streams slices into a temporary file and renames it into place on a clean close.

    Use as a context manager: `writer[z] = slice2d`. On an exception the temporary output is
    removed and nothing at `path` changes.
    """

    def __init__(
        self,
        path: PathLike,
        shape: tuple[int, int, int],
        dtype: Any,
        voxel_size: tuple[float, float, float] | None = None,
        force: bool = False,
        protect: Iterable[PathLike] = (),
    ) -> None:
        self.path = Path(path)
        self.format = stack_format(self.path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.voxel_size = _check_voxel_size(path, voxel_size)
        self.force = force
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise DqlrError(f"{path}: cannot write shape {self.shape}; it must be a 3-D ZYX stack")
        if self.dtype.kind not in "uif":
            raise DqlrError(f"{path}: cannot write data type {self.dtype}; use integers or floats")
        _check_target(self.path, force, protect)
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{secrets.token_hex(4)}"
        self._written = np.zeros(self.shape[0], dtype=bool)
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._array = self._create()
        except BaseException as error:
            _remove(self._tmp)
            if isinstance(error, OSError):
                raise DqlrError(f"{path}: cannot create the output ({error})") from error
            raise

    def _create(self) -> Any:
        z, y, x = self.voxel_size or (None, None, None)
        if self.format == "zarr":
            return _create_zarr(self._tmp, self.shape, self.dtype, self.voxel_size)
        kwargs: dict[str, Any] = {"photometric": "minisblack"}
        if self.format == "ome-tiff":
            metadata: dict[str, Any] = {"axes": "ZYX"}
            if self.voxel_size:
                for axis, size in zip("ZYX", (z, y, x), strict=True):
                    metadata[f"PhysicalSize{axis}"] = size
                    metadata[f"PhysicalSize{axis}Unit"] = "µm"
            kwargs.update(ome=True, metadata=metadata)
        else:
            # ImageJ convention: resolution in pixels per `unit`, z spacing in `unit`.
            metadata = {"axes": "ZYX"}
            if self.voxel_size:
                metadata.update(spacing=z, unit="um")
                kwargs.update(resolution=(1.0 / x, 1.0 / y), resolutionunit=1)
            kwargs.update(imagej=self.dtype in IMAGEJ_DTYPES, metadata=metadata)
        return tifffile.memmap(self._tmp, shape=self.shape, dtype=self.dtype, **kwargs)

    def __setitem__(self, z: int | slice, value: Any) -> None:
        if self._closed:
            raise ValueError(f"writer for {self.path} is already closed")
        value = np.asarray(value)
        if not np.can_cast(value.dtype, self.dtype, casting="same_kind"):
            raise ValueError(f"cannot write {value.dtype} slices into a {self.dtype} stack")
        self._array[z] = value
        self._written[z] = True

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> Path:
        """Finish the file and move it to `path`; raises (and cleans up) if slices are missing."""
        if self._closed:
            return self.path
        try:
            missing = int((~self._written).sum())
            if missing:
                raise DqlrError(
                    f"{self.path}: only {self.shape[0] - missing} of {self.shape[0]} slices "
                    "were written; the output was discarded"
                )
            if self.format != "zarr":
                self._array.flush()
            self._array = None
            if not self.force and os.path.lexists(self.path):
                raise DqlrError(f"{self.path}: exists; pass --force to overwrite")
            _move_into_place(self._tmp, self.path)
        except OSError as error:
            self.abort()
            raise DqlrError(f"{self.path}: cannot finish writing ({error})") from error
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop the temporary output; `path` is left as it was."""
        self._array = None
        self._closed = True
        _remove(self._tmp)


def _create_zarr(tmp: Path, shape: tuple[int, ...], dtype: np.dtype, voxel_size: tuple | None) -> Any:
    """OME-Zarr (NGFF 0.4, zarr v2) with one slice per chunk, so streaming reads one chunk."""
    import zarr

    root = zarr.open_group(str(tmp), mode="w-", zarr_format=2)
    chunks = (1, min(shape[1], ZARR_TILE), min(shape[2], ZARR_TILE))
    array = root.create_array(
        "0",
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    axes: list[dict[str, str]] = [{"name": n, "type": "space"} for n in "zyx"]
    if voxel_size:
        for axis in axes:
            axis["unit"] = "micrometer"
    scale = [float(s) for s in voxel_size] if voxel_size else [1.0, 1.0, 1.0]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": tmp.name.split(".tmp-")[0].lstrip("."),
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }
    ]
    return array


def _check_voxel_size(path: PathLike, voxel_size: Any) -> tuple[float, float, float] | None:
    if voxel_size is None:
        return None
    try:
        sizes = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != 3 or not all(np.isfinite(s) and s > 0 for s in sizes):
        raise DqlrError(
            f"{path}: voxel size {voxel_size!r} is invalid; give three positive numbers (z, y, x)"
        )
    return (sizes[0], sizes[1], sizes[2])


def _same_or_inside(target: Path, other: Path) -> bool:
    """True if `other` is `target` or lies inside it (a zarr folder holds its arrays)."""
    try:
        if target.exists() and other.exists() and os.path.samefile(target, other):
            return True
    except OSError:
        pass
    target, other = target.resolve(), other.resolve()
    return other == target or target in other.parents


def _check_target(path: Path, force: bool, protect: Iterable[PathLike]) -> None:
    for other in protect:
        if _same_or_inside(path, Path(other)):
            raise DqlrError(
                f"{path}: is also an input ({other}); refusing to overwrite it, choose another output path"
            )
    if not os.path.lexists(path):
        return
    if not force:
        raise DqlrError(f"{path}: exists; pass --force to overwrite")
    if path.is_dir() and not path.is_symlink() and not _looks_like_zarr(path):
        raise DqlrError(
            f"{path}: is a folder that is not a Zarr store; refusing to replace it, "
            "choose another output path"
        )


def _looks_like_zarr(path: Path) -> bool:
    return any((path / name).exists() for name in (".zgroup", ".zarray", "zarr.json"))


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished output over `path`; an old folder is deleted only afterwards."""
    replacing_dir = os.path.lexists(path) and (tmp.is_dir() or (path.is_dir() and not path.is_symlink()))
    if not replacing_dir:
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{secrets.token_hex(4)}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()
