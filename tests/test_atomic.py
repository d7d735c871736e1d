"""dqlr.atomic: a destination holds the old content or the new one, never a half-written mix."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dqlr.atomic import atomic_path, move_into_place, remove, temp_path, write_bytes, write_text
from dqlr.errors import DqlrError
from dqlr.simulation import _write_json


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A private umask, so a result is 0o644 only if the writer sets it on purpose."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def make_store(path: Path, files: dict[str, str]) -> Path:
    """A folder like a Zarr store: metadata plus a nested chunk."""
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def test_successful_write_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("old")
    assert write_text(path, "new") == path
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_write_bytes_round_trip(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "blob.bin", b"\x00\xffdqlr")
    assert path.read_bytes() == b"\x00\xffdqlr"
    assert os.listdir(tmp_path) == ["blob.bin"]


def test_error_inside_atomic_path_keeps_old_content(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("old,content\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(path) as tmp:
        tmp.write_text("half a ta")
        raise RuntimeError("disk full")
    assert path.read_text() == "old,content\n"
    assert os.listdir(tmp_path) == ["table.csv"]


def test_error_on_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_temp_path_is_hidden_beside_the_target_and_keeps_suffix(tmp_path: Path) -> None:
    target = tmp_path / "figure.png"
    a, b = temp_path(target, ".png"), temp_path(target, ".png")
    assert a.parent == tmp_path and a.name.startswith(".figure.png.tmp-")
    assert a.suffix == ".png"
    assert a != b


def test_atomic_path_creates_parent_folders(tmp_path: Path) -> None:
    path = write_text(tmp_path / "a" / "b" / "c.txt", "deep")
    assert path.read_text() == "deep"
    assert os.listdir(path.parent) == ["c.txt"]


def test_results_follow_the_users_umask(tmp_path: Path, strict_umask: None) -> None:
    path = write_text(tmp_path / "config.toml", "x = 1\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_mode_sets_the_permissions_when_asked(tmp_path: Path, strict_umask: None) -> None:
    path = tmp_path / "shared.txt"
    with atomic_path(path, mode=0o644) as tmp:
        tmp.write_text("for everyone")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_replacing_a_folder_leaves_only_the_new_one(tmp_path: Path) -> None:
    store = make_store(tmp_path / "out.zarr", {".zgroup": "old", "0/0/0/0": "old chunk"})
    with atomic_path(store) as tmp:
        make_store(tmp, {".zgroup": "new", "0/1/0/0": "new chunk"})
    assert (store / ".zgroup").read_text() == "new"
    assert (store / "0/1/0/0").read_text() == "new chunk"
    assert not (store / "0/0/0/0").exists()
    assert os.listdir(tmp_path) == ["out.zarr"]


def test_failed_folder_write_keeps_the_old_folder(tmp_path: Path) -> None:
    store = make_store(tmp_path / "out.zarr", {".zgroup": "old", "0/0": "old chunk"})
    with pytest.raises(RuntimeError), atomic_path(store) as tmp:
        make_store(tmp, {".zgroup": "new"})
        raise RuntimeError("crash mid-write")
    assert (store / ".zgroup").read_text() == "old"
    assert (store / "0/0").read_text() == "old chunk"
    assert os.listdir(tmp_path) == ["out.zarr"]


def test_folder_rename_failure_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path / "out.zarr", {".zgroup": "old"})
    tmp = make_store(temp_path(store), {".zgroup": "new"})
    real_replace = os.replace

    def fail_second_rename(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        """The old folder moves aside; moving the new one in fails (e.g. the disk vanished)."""
        if Path(src) == tmp:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second_rename)
    with pytest.raises(OSError, match="rename failed"):
        move_into_place(tmp, store)
    monkeypatch.undo()
    assert (store / ".zgroup").read_text() == "old"
    remove(tmp)
    assert os.listdir(tmp_path) == ["out.zarr"]


def test_a_file_can_replace_a_folder_and_back(tmp_path: Path) -> None:
    path = make_store(tmp_path / "result", {"a": "1"})
    write_text(path, "now a file")
    assert path.read_text() == "now a file"
    with atomic_path(path) as tmp:
        make_store(tmp, {"b": "2"})
    assert (path / "b").read_text() == "2"
    assert os.listdir(tmp_path) == ["result"]


def test_remove_does_not_follow_a_symlink_into_a_folder(tmp_path: Path) -> None:
    target = make_store(tmp_path / "data", {"keep.txt": "keep me"})
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    remove(link)
    assert not os.path.lexists(link)
    assert (target / "keep.txt").read_text() == "keep me"
    remove(tmp_path / "missing")  # absent paths are fine


def test_simulation_json_is_atomic_and_refuses_without_force(tmp_path: Path) -> None:
    path = tmp_path / "truth.json"
    _write_json(path, {"a": 1}, force=False)
    with pytest.raises(DqlrError, match="exists; pass --force"):
        _write_json(path, {"a": 2}, force=False)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    _write_json(path, {"a": 2}, force=True)
    assert path.read_text() == '{\n  "a": 2\n}\n'
    assert os.listdir(tmp_path) == ["truth.json"]
