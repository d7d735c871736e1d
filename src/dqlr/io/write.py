"""Write ZYX stacks as TIFF (ImageJ), OME-TIFF or OME-Zarr, one slice at a time.

Outputs are written to a temporary name next to the target and renamed into place
(`dqlr.atomic`), so a crash never leaves a half-written result under the real name and an
existing file is only replaced once the new one is complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from dqlr.atomic import move_into_place, refuse_existing, remove, temp_path
from dqlr.errors import DqlrError
from dqlr.io.layout import Layout, axis_order
from dqlr.io.pyramid import level_factors, multiscales_attrs, omero_attrs, write_pyramid
from dqlr.io.stack import PathLike, looks_like_zarr, stack_format

# ImageJ hyperstacks hold only these; other dtypes go into a plain TIFF so they are kept exactly.
IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
ZARR_TILE = 1024


def write_stack(
    path: PathLike,
    data: np.ndarray | Any,
    voxel_size: tuple[float, float, float] | None = None,
    force: bool = False,
    protect: Iterable[PathLike] = (),
    info: str | None = None,
) -> Path:
    """Write a ZYX stack atomically, keeping its dtype; reads lazy inputs slice by slice."""
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    if len(shape) != 3:
        raise DqlrError(f"{path}: cannot write data of shape {shape}; it must be a 3-D ZYX stack")
    with StackWriter(path, shape, data.dtype, voxel_size, force, protect, info) as writer:
        for z in range(shape[0]):
            writer[z] = np.asarray(data[z])
    return writer.path


class StackWriter:
    """Streams slices into a temporary file and renames it into place on a clean close.

    Use as a context manager: `writer[z] = slice2d`. On an exception the temporary output is
    removed and nothing at `path` changes. `info` is free text kept with the stack where a viewer
    shows it: ImageJ's Info property (TIFF), the image Description (OME-TIFF), attrs["dqlr"]["info"]
    (Zarr); `add_info` appends to it while slices are being written (what is only known at the end).

    `layout` (optional) makes it a file of several stacks, `writer[t, c, z] = slice2d`, with the
    layout's time points and channels, channel names and display settings, ImageJ slice labels and
    (Zarr) pyramid levels; `shape` is then each stack's ZYX shape.

    `tmp` (optional) names the temporary output instead of a fresh hidden name: a resumable run's
    partial Zarr store, reopened as it is when one of the same shape, dtype and chunks is there
    (else made anew), and left in place by `keep()` when the run stops.
    """

    def __init__(
        self,
        path: PathLike,
        shape: tuple[int, int, int],
        dtype: Any,
        voxel_size: tuple[float, float, float] | None = None,
        force: bool = False,
        protect: Iterable[PathLike] = (),
        info: str | None = None,
        layout: Layout | None = None,
        chunk: int = ZARR_TILE,
        tmp: PathLike | None = None,
    ) -> None:
        self.path = Path(path)
        self.chunk = chunk  # Zarr chunks are (1, chunk, chunk)
        self.info = info
        self._info_added = False
        self.format = stack_format(self.path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.voxel_size = _check_voxel_size(path, voxel_size)
        self.force = force
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise DqlrError(f"{path}: cannot write shape {self.shape}; it must be a 3-D ZYX stack")
        if self.dtype.kind not in "uif":
            raise DqlrError(f"{path}: cannot write data type {self.dtype}; use integers or floats")
        self.layout = _output_layout(self.path, self.format, self.dtype, self.shape, layout)
        _check_target(self.path, force, protect)
        self._tmp = Path(tmp) if tmp is not None else temp_path(self.path)
        self._written = np.zeros((self.layout.size("T"), self.layout.size("C"), self.shape[0]), dtype=bool)
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._array = self._create()
        except BaseException as error:
            remove(self._tmp)
            if isinstance(error, OSError):
                raise DqlrError(f"{path}: cannot create the output ({error})") from error
            raise

    def _create(self) -> Any:
        z, y, x = self.voxel_size or (None, None, None)
        layout = self.layout
        if self.format == "zarr":
            reopened = _reopen_zarr(self._tmp, layout, self.dtype, self.chunk)
            if reopened is not None:
                return reopened
            remove(self._tmp)
            return _create_zarr(
                self._tmp, layout, self.dtype, self.voxel_size, self.info, self.chunk, self.path.name
            )
        kwargs: dict[str, Any] = {"photometric": "minisblack"}
        if self.format == "ome-tiff":
            metadata: dict[str, Any] = {"axes": layout.axes}
            if self.info:
                metadata["Description"] = self.info
            if self.voxel_size:
                for axis, size in zip("ZYX", (z, y, x), strict=True):
                    metadata[f"PhysicalSize{axis}"] = size
                    metadata[f"PhysicalSize{axis}Unit"] = "µm"
            if any(c.name for c in layout.channels):
                metadata["Channel"] = {"Name": [c.name or "" for c in layout.channels]}
            kwargs.update(ome=True, metadata=metadata)
        else:
            # ImageJ convention: resolution in pixels per `unit`, z spacing in `unit`.
            metadata = {"axes": layout.axes}
            if self.info:
                metadata["Info"] = self.info
            if self.voxel_size:
                vz, vy, vx = self.voxel_size
                metadata.update(spacing=vz, unit="um")
                kwargs.update(resolution=(1.0 / vx, 1.0 / vy), resolutionunit=1)
            if self.dtype in IMAGEJ_DTYPES:
                metadata.update(_imagej_display(layout))
            kwargs.update(imagej=self.dtype in IMAGEJ_DTYPES, metadata=metadata)
        return tifffile.memmap(self._tmp, shape=layout.shape, dtype=self.dtype, **kwargs)

    def __setitem__(self, key: int | slice | tuple[int, int, int | slice], value: Any) -> None:
        """`writer[z] = slice` (the first stack), or `writer[t, c, z]` in a file of several."""
        if self._closed:
            raise ValueError(f"writer for {self.path} is already closed")
        t, c, z = key if isinstance(key, tuple) else (0, 0, key)
        value = np.asarray(value)
        if not np.can_cast(value.dtype, self.dtype, casting="same_kind"):
            raise ValueError(f"cannot write {value.dtype} slices into a {self.dtype} stack")
        self._array[plane_index(self.layout.axes, t, c, z)] = value
        self._written[t, c, z] = True

    def shared_array(self) -> Any:
        """The temporary output itself, for tasks in other processes that each fill whole chunks or
        planes of it (a tile-parallel run; the stacks of a file): the Zarr array, or for a TIFF a
        `SharedTiff`; indexed in `layout.axes` order (`plane_index`). Every slice then counts as
        written, and close() still renames the output into place only when called, after those
        tasks have finished. A TIFF writer takes no more slices itself."""
        self._written[:] = True
        if self.format == "zarr":
            return self._array
        if self._array is None:
            raise ValueError(f"writer for {self.path} is already shared or closed")
        shared = SharedTiff(self._tmp, self._array.offset, self._array.shape, self._array.dtype)
        self._array.flush()
        self._array = None  # the tasks write the file; this process keeps no pages of it
        return shared

    def add_info(self, text: str) -> None:
        """Append a line to `info`; stored when the output is finished."""
        self.info = f"{self.info}\n{text}" if self.info else text
        self._info_added = True

    def _store_added_info(self) -> None:
        """TIFF metadata is written with the file's first page: copy the slices into a new temp
        file that carries the final info (only when info was added; one more pass over the data)."""
        if self.format == "zarr":
            import zarr

            zarr.open_group(str(self._tmp), mode="r+").attrs["dqlr"] = {"info": self.info}
            return
        if self._array is not None:
            self._array.flush()
        self._array = None
        source, self._tmp = self._tmp, temp_path(self.path)
        try:
            self._array = self._create()
            old = tifffile.memmap(source, mode="r")
            for plane in np.ndindex(self.layout.shape[:-2]):
                self._array[plane] = old[plane]
            del old
        finally:
            remove(source)

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
                    f"{self.path}: only {self._written.size - missing} of {self._written.size} slices "
                    "were written; the output was discarded"
                )
            if self._info_added:
                self._store_added_info()
            if self.format != "zarr" and self._array is not None:
                self._array.flush()
            elif len(self.layout.scales) > 1:
                write_pyramid(self._tmp, self.layout.axes, self.layout.scales, ZARR_TILE)
            self._array = None
            refuse_existing(self.path, self.force)
            move_into_place(self._tmp, self.path)
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
        remove(self._tmp)

    def keep(self) -> Path:
        """Stop without finishing and leave the temporary output where it is (a resumable run's
        partial store, see `tmp`); `path` is left as it was. Returns the temporary path."""
        self._array = None
        self._closed = True
        return self._tmp


def plane_index(axes: str, t: int, c: int, z: int | slice) -> tuple[int | slice, ...]:
    """Where plane (t, c, z) lies in an array of the given axes (TCZYX letters; YX whole)."""
    at = {"T": t, "C": c, "Z": z}
    return tuple(at.get(a, slice(None)) for a in axes)


class SharedTiff:
    """A StackWriter's temporary TIFF written from other processes, each its own whole planes
    (`shared[index] = plane`, the index in the layout's axes as `plane_index` gives it). tifffile
    made the file contiguous (the writer memory-maps it), so a plane lies at a known offset and
    goes there in one positioned write: bytes, not memory pages, so planes that share a page do
    not overwrite each other even from other machines. Pickles as its path, offset, shape, dtype."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = Path(path)
        self.offset = int(offset)  # of the first plane's first byte
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)

    def __setitem__(self, key: tuple[Any, ...], value: Any) -> None:
        """One whole plane: an index for each axis before YX, then all of Y and X."""
        index, yx = key[:-2], key[-2:]
        plane = np.ascontiguousarray(value, dtype=self.dtype)
        if len(key) != len(self.shape) or yx != (slice(None),) * 2 or plane.shape != self.shape[-2:]:
            raise ValueError(f"{self.path}: only whole planes can be written from another process")
        at = self.offset + int(np.ravel_multi_index(index, self.shape[:-2])) * plane.nbytes
        data = plane.tobytes()
        with self.path.open("r+b") as file:
            if os.pwrite(file.fileno(), data, at) != len(data):
                raise OSError(f"{self.path}: short write")


def _create_zarr(
    tmp: Path,
    layout: Layout,
    dtype: np.dtype,
    voxel_size: tuple | None,
    info: str | None,
    chunk: int = ZARR_TILE,
    name: str | None = None,
) -> Any:
    """OME-Zarr (NGFF 0.4, zarr v2) with one slice per chunk, so streaming reads one chunk; the
    lower pyramid levels the metadata lists are written on close (`write_pyramid`). `name` (the
    output's) goes into the metadata; by default it is read off the temporary name."""
    import zarr

    root = zarr.open_group(str(tmp), mode="w-", zarr_format=2)
    chunks = tuple(min(n, chunk) if a in "YX" else 1 for a, n in zip(layout.axes, layout.shape, strict=True))
    array = root.create_array(
        "0",
        shape=layout.shape,
        dtype=dtype,
        chunks=chunks,
        fill_value=0,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    name = name or tmp.name.split(".tmp-")[0].lstrip(".")
    root.attrs["multiscales"] = [multiscales_attrs(name, layout.axes, voxel_size, layout.scales)]
    if layout.channels:
        root.attrs["omero"] = omero_attrs(layout.channels, dtype)
    if info:
        root.attrs["dqlr"] = {"info": info}
    return array


def _reopen_zarr(tmp: Path, layout: Layout, dtype: np.dtype, chunk: int) -> Any:
    """The level-0 array of a partial store at `tmp` when it fits (shape, dtype, chunks), else None."""
    if not looks_like_zarr(tmp):
        return None
    import zarr

    try:
        array: Any = zarr.open_group(str(tmp), mode="r+")["0"]
    except Exception:  # anything unreadable is made anew
        return None
    chunks = tuple(min(n, chunk) if a in "YX" else 1 for a, n in zip(layout.axes, layout.shape, strict=True))
    fits = array.shape == layout.shape and array.dtype == dtype and tuple(array.chunks) == chunks
    return array if fits else None


def _output_layout(
    path: Path, fmt: str, dtype: np.dtype, shape: tuple[int, ...], layout: Layout | None
) -> Layout:
    """The layout as this format stores it (its axis order); a plain ZYX stack without one."""
    if layout is None:
        return Layout.of_stack(shape)
    if layout.zyx != shape:
        raise DqlrError(f"{path}: stacks of shape {shape} do not fit the layout's {layout.zyx}")
    if fmt == "zarr":
        level_factors(layout.scales)  # levels that block means cannot make fail before any work
    return layout.ordered(axis_order(fmt, fmt == "tiff" and dtype in IMAGEJ_DTYPES, layout.axes))


def _imagej_display(layout: Layout) -> dict[str, Any]:
    """ImageJ's display range (min/max, Ranges), LUTs and slice labels of a layout."""
    extra: dict[str, Any] = {}
    channels = layout.channels
    if channels and all(c.display_range is not None for c in channels):
        extra["Ranges"] = tuple(float(v) for c in channels for v in c.display_range or ())
        if len(channels) == 1:
            extra["min"], extra["max"] = extra["Ranges"]
    if channels and all(c.lut is not None for c in channels):
        extra["LUTs"] = [np.asarray(c.lut, np.uint8) for c in channels]
    if layout.labels is not None:
        extra["Labels"] = [str(v) for v in np.ravel(layout.labels)]
    return extra


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
    refuse_existing(path, force)
    if os.path.lexists(path) and path.is_dir() and not path.is_symlink() and not looks_like_zarr(path):
        raise DqlrError(
            f"{path}: is a folder that is not a Zarr store; refusing to replace it, "
            "choose another output path"
        )


# The writer that takes one slice at a time, for results larger than memory (the name callers use).
create_stack_writer = StackWriter
