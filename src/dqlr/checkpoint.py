"""Self-describing checkpoints: weights + full config + normalisation, written atomically.

A checkpoint alone is enough to enhance a stack; it also holds optimiser, schedule and random states
so that `--resume` continues exactly where training stopped.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from dqlr.config import Config
from dqlr.errors import DqlrError
from dqlr.model import DQLR

FORMAT = "dqlr-checkpoint"
VERSION = 1
# Models shipped in the package (scripts/train_default_model.py made them); "default" names the one
# used when no --model is given: the variant that won benchmarks/quality.py.
SHIPPED = {
    "paper": "dqlr_paper.pt",
    "noquant": "dqlr_noquant.pt",
    "depth-aware": "dqlr_depth_aware.pt",
}
DEFAULT_MODEL = "depth-aware"


@dataclass
class LoadedModel:
    """A network ready for inference, with the config and facts it was trained with."""

    network: DQLR
    config: Config
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DqlrError(f"{path}: model file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise DqlrError(f"{path}: not a dqlr model file ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DqlrError(f"{path}: not a dqlr model file (train one with `dqlr train`)")
    if state.get("version", 0) > VERSION:
        raise DqlrError(f"{path}: made by a newer dqlr (format {state['version']}); upgrade dqlr")
    return state


def export_model(checkpoint: str | Path, path: str | Path) -> Path:
    """Copy a training checkpoint without optimiser and random states: a small file to share."""
    state = read_checkpoint(checkpoint)
    keep = ("mode", "config", "model", "normalization", "epoch", "step", "metrics")
    return save_checkpoint(path, {k: state[k] for k in keep if k in state})


def shipped_model_path(name: str = "default") -> Path:
    """Path of a model shipped inside the package: "default" or one of SHIPPED."""
    name = DEFAULT_MODEL if name == "default" else name
    if name not in SHIPPED:
        choices = ", ".join(["default", *SHIPPED])
        raise DqlrError(f"unknown shipped model '{name}'; choose one of {choices}")
    path = Path(str(resources.files("dqlr") / "weights" / SHIPPED[name]))
    if not path.is_file():
        raise DqlrError(f"{path}: shipped model missing; reinstall dqlr or pass --model")
    return path


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint (or the shipped default when path is None) for inference."""
    if path is None:
        path = shipped_model_path("default")
    elif (str(path) in SHIPPED or str(path) == "default") and not Path(path).exists():
        path = shipped_model_path(str(path))
    state = read_checkpoint(path)
    config = Config.from_dict(state["config"], source=str(path))
    network = DQLR(config.model)
    try:
        network.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as error:
        first = str(error).splitlines()[0][:120]
        raise DqlrError(f"{path}: weights do not match its config ({first})") from None
    network.to(device).eval()
    meta = {k: state.get(k) for k in ("mode", "epoch", "step", "normalization", "metrics")}
    return LoadedModel(network=network, config=config, meta=meta, path=str(path))
