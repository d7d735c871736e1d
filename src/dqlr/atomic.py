"""The one way dqlr writes a file or a folder: into a hidden temp path beside it, then a rename.

A crash, a full disk or Ctrl-C never leaves half a file at the destination: readers see the old
content or the new one. Every writer in the package (stacks, checkpoints, configs, tables, figures,
reports) goes through `atomic_path` or one of the small helpers built on it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dqlr.errors import DqlrError

PathLike = str | os.PathLike[str]


def temp_path(path: PathLike, suffix: str = "") -> Path:
    """A fresh hidden name in the destination's folder (same file system, so rename is atomic).

    `suffix` keeps an extension that a writer looks at (matplotlib picks the format from it).
    """
    path = Path(path)
    return path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}{suffix}"


def partial_path(path: PathLike) -> Path:
    """The one fixed hidden name beside the destination for a resumable run's unfinished output
    (`.NAME.partial`): a run started again finds it, where `temp_path` names are fresh each time."""
    path = Path(path)
    return path.parent / f".{path.name}.partial"


def remove(path: PathLike) -> None:
    """Delete a file or a folder if it is there; never follows a symlink into a folder."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def refuse_existing(path: PathLike, force: bool) -> None:
    """The one check before writing an output: an existing one is replaced only with --force."""
    if not force and os.path.lexists(path):
        raise DqlrError(f"{path}: exists; pass --force to overwrite")


def _sync(path: Path) -> None:
    """Flush a finished file to disk before the rename, so a power cut cannot leave it empty."""
    if path.is_file():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def move_into_place(tmp: PathLike, path: PathLike) -> None:
    """Rename a finished temp file or folder over `path`; an old folder is deleted only afterwards."""
    tmp, path = Path(tmp), Path(path)
    _sync(tmp)
    replacing_dir = os.path.lexists(path) and (tmp.is_dir() or (path.is_dir() and not path.is_symlink()))
    if not replacing_dir:
        os.replace(tmp, path)
        return
    old = temp_path(path)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    remove(old)


@contextmanager
def atomic_path(path: PathLike, suffix: str = "", mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path to write; on a clean exit it replaces `path`, on an error it is removed.

    `mode` sets the permissions of a finished file; None (the default) keeps what the writer made,
    which follows the user's umask like any other file they write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        if mode is not None and tmp.is_file():
            os.chmod(tmp, mode)
        move_into_place(tmp, path)
    finally:
        remove(tmp)


def write_text(path: PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
