"""Model files: safe to load (weights_only), self-describing, portable, and clear about bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dqlr.config import Config
from dqlr.errors import DqlrError
from dqlr.model.checkpoint import (
    VERSION,
    build_network,
    convert_checkpoint,
    load_model,
    read_checkpoint,
    save_checkpoint,
    shipped_model_path,
)
from tests.conftest import tiny_config


class _Payload:
    """Unpickling this would run code; a safe loader must refuse it."""

    def __reduce__(self):  # noqa: D105
        return (print, ("pwned",))


def _tiny_file(path: Path, **extra: object) -> Path:
    config = tiny_config()
    return save_checkpoint(
        path, {"config": config.to_dict(), "model": build_network(config).state_dict(), **extra}
    )


def test_a_saved_model_loads_back_with_its_config(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path / "m.pt")
    model = load_model(path)
    assert model.config == tiny_config() and model.meta["mode"] == "paper"
    assert read_checkpoint(path)["version"] == VERSION
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # meant to be shared


def test_a_file_with_python_objects_is_refused_without_running_them(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    config = tiny_config()
    torch.save(
        {"format": "dqlr-checkpoint", "version": VERSION, "config": config.to_dict(), "x": _Payload()}, path
    )
    code = f"from dqlr.model.checkpoint import load_model\nload_model(r'{path}')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pwned" not in done.stdout
    assert "refused: it holds Python objects" in done.stderr
    with pytest.raises(DqlrError, match=r"evil\.pt: refused"):
        load_model(path)


def test_foreign_and_broken_files_get_one_line_naming_them(tmp_path: Path) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DqlrError, match=r"model\.pt: not a dqlr model file"):
        load_model(bogus)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DqlrError, match=r"other\.pt: not a dqlr model file"):
        load_model(tmp_path / "other.pt")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(_tiny_file(tmp_path / "whole.pt").read_bytes()[:5000])
    with pytest.raises(DqlrError, match=r"cut\.pt: not a dqlr model file"):
        load_model(truncated)
    with pytest.raises(DqlrError, match="model file not found.*default, paper"):
        load_model(tmp_path / "missing.pt")
    for error in (DqlrError,):
        with pytest.raises(error) as caught:
            load_model(bogus)
        assert "\n" not in str(caught.value)


def test_newer_and_older_formats_are_named(tmp_path: Path) -> None:
    newer = _tiny_file(tmp_path / "newer.pt")
    state = torch.load(newer, weights_only=True)
    torch.save({**state, "version": VERSION + 1}, newer)
    with pytest.raises(DqlrError, match="newer dqlr"):
        load_model(newer)
    torch.save({**state, "version": 1}, tmp_path / "old.pt")
    with pytest.raises(DqlrError, match=r"old\.pt: made by an older dqlr.*dqlr convert"):
        load_model(tmp_path / "old.pt")


def test_a_format_1_file_converts_to_the_same_network(tmp_path: Path) -> None:
    """Format 1 kept run options in the config, the mode twice and absolute paths."""
    config = Config().with_overrides(
        {"mode": "depth-aware", "model.base_channels": 8, "model.latent_channels": 8}
    )
    network = build_network(config)
    old = config.to_dict()
    mode = old.pop("mode")
    old["train"].update(device="cuda", amp=True, num_threads=4, mode=mode)
    old["model"]["condition"] = True
    normalization = {
        "per_stack": True,
        "training_stacks": [{"name": "/home/someone/data/plant00.tif", "low": 1.0}],
    }
    torch.save(
        {
            "format": "dqlr-checkpoint",
            "version": 1,
            "mode": mode,
            "config": old,
            "model": network.state_dict(),
            "normalization": normalization,
        },
        tmp_path / "v1.pt",
    )
    convert_checkpoint(tmp_path / "v1.pt", tmp_path / "v2.pt")
    model = load_model(tmp_path / "v2.pt")
    assert model.config == config and model.network.condition
    assert model.meta["normalization"]["training_stacks"][0]["name"] == "plant00.tif"
    for key, value in network.state_dict().items():
        assert torch.equal(model.network.state_dict()[key], value)
    with pytest.raises(DqlrError, match="exists"):
        convert_checkpoint(tmp_path / "v1.pt", tmp_path / "v2.pt")


def test_shipped_models_are_format_2_and_hold_no_paths() -> None:
    for name in ("paper", "noquant", "depth-aware"):
        path = shipped_model_path(name)
        state = read_checkpoint(path)
        assert state["version"] == VERSION and "trainer" not in state
        assert b"/work/" not in path.read_bytes() and b"/home/" not in path.read_bytes()
        for stack in state["normalization"]["training_stacks"]:
            assert "/" not in stack["name"]
