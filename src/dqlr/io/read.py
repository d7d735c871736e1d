"""Read one ZYX stack from TIFF (ImageJ), OME-TIFF or (OME-)Zarr, eagerly or slice by slice.

Any parser failure becomes a one-line `DqlrError`; a cut-off TIFF fails instead of silently
reading fewer slices or zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from dqlr.errors import DqlrError
from dqlr.io.metadata import ngff_axes, ngff_voxel_size, tiff_info, tiff_voxel_size
from dqlr.io.stack import (
    LazyStack,
    PathLike,
    Stack,
    check_dtype,
    check_finite,
    looks_like_zarr,
    plan_zyx,
    stack_format,
)

_CORRUPT_WORDS = ("corrupt", "truncat")


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
        if p.is_dir() and not looks_like_zarr(p):
            raise DqlrError(
                f"{path}: is a folder without Zarr metadata (.zgroup, .zarray or zarr.json); check the path"
            )
        with _as_corrupt(path):
            return _read_zarr(p, channel, timepoint, lazy)
    if p.is_dir():
        raise DqlrError(f"{path}: is a folder, not a TIFF file; check the path")
    with _as_corrupt(path):
        return _read_tiff(p, channel, timepoint, lazy)


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
        voxel_size = tiff_voxel_size(tif)
        info = tiff_info(tif)
        key = plan_zyx(p, axes, shape, channel, timepoint)
        check_dtype(p, dtype)
        if lazy:
            data = _lazy_tiff(p, series, key)
        else:
            data = _owned(series.asarray(), key)
            _check_tiff_complete(p, series, log.problems)
    if not lazy:
        check_finite(data, p)
    return Stack(data, voxel_size, axes, str(p), info)


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


def _read_zarr(p: Path, channel: int | None, timepoint: int | None, lazy: bool) -> Stack:
    import zarr

    node: Any = zarr.open(str(p), mode="r")
    voxel_size, info = None, None
    if isinstance(node, zarr.Array):
        array = node
        names: Any = node.attrs.get("_ARRAY_DIMENSIONS")
        axes = (
            ngff_axes(names)
            if names
            else {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(node.ndim, "Q" * node.ndim)
        )
    else:
        attrs: dict[str, Any] = dict(node.attrs.asdict())
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
        axes = ngff_axes(axes_meta) if axes_meta else "TCZYX"[-array.ndim :]
        voxel_size = ngff_voxel_size(meta, dataset, axes_meta, axes)
        info = (attrs.get("dqlr") or {}).get("info")
    if len(axes) != array.ndim:
        raise DqlrError(f"{p}: axes metadata {axes!r} does not match the {array.ndim}-D array")
    key = plan_zyx(p, axes, tuple(array.shape), channel, timepoint)
    check_dtype(p, np.dtype(array.dtype))
    data: Any
    if lazy:
        data = array if all(isinstance(k, slice) for k in key) else LazyStack(array, key)
    else:
        data = _owned(array, key)
        check_finite(data, p)
    return Stack(data, voxel_size, axes, str(p), info)


def _owned(source: Any, key: tuple) -> np.ndarray:
    """Selected stack in native byte order, not a view that keeps every channel in memory."""
    data = np.asarray(source[key])
    if not data.dtype.isnative:
        return data.astype(data.dtype.newbyteorder("="))
    if data.base is not None and data.size < np.prod(source.shape):
        return data.copy()
    return data
