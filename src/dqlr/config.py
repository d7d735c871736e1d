"""The one typed configuration of a dqlr model and its training, saved next to every checkpoint.

YAML in, YAML out. Unknown keys and bad values are refused with a message that names the key, so a
typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dqlr.errors import DqlrError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Network shape: encoder E, recurrent cell R, quantizer Q, generator G."""

    base_channels: int = Field(16, ge=4, le=256)
    latent_channels: int = Field(32, ge=2, le=512)
    downsample: int = 4
    res_blocks: int = Field(1, ge=0, le=8)
    recurrent: Literal["convgru", "convlstm"] = "convgru"
    predict_next: int = Field(2, ge=0, le=8)
    initial_state: Literal["zero", "random"] = "zero"
    quantize: bool = True
    codebook_size: int = Field(128, ge=2, le=65536)
    beta: float = Field(0.25, ge=0.0)
    ema: bool = True
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    kmeans_init: bool = True
    dead_code_restart: bool = True
    dead_code_threshold: float = Field(0.5, ge=0.0)
    condition: bool = False  # depth-aware mode: the encoder also sees the slice's degradation level

    @field_validator("downsample")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value not in (1, 2, 4, 8, 16):
            raise ValueError("must be one of 1, 2, 4, 8, 16")
        return value


class LossConfig(_Strict):
    """L = MSE + lambda_ssim * (1 - SSIM) + lambda_quant * VQ loss."""

    lambda_ssim: float = Field(1.0, ge=0.0)
    lambda_quant: float = Field(1.0, ge=0.0)
    ssim_sigma: float = Field(1.5, gt=0.0)


class DataConfig(_Strict):
    """How training windows are cut from the stacks and how intensities are normalised."""

    crop: int = Field(64, ge=16)
    percentile_low: float = Field(0.5, ge=0.0, lt=100.0)
    percentile_high: float = Field(99.8, gt=0.0, le=100.0)
    augment: bool = True
    top_state_probability: float = Field(0.1, ge=0.0, le=1.0)


class DepthAwareConfig(_Strict):
    """Depth-aware mode: pairs made by degrading sharp upper slices like deeper ones of the same stack."""

    pair_fraction: float = Field(0.5, ge=0.0, le=1.0)  # share of each batch that is pairs
    reference_fraction: float = Field(0.3, gt=0.0, lt=1.0)  # upper part of a stack used as targets
    target_smoothing_px: float = Field(0.0, ge=0.0)  # Gaussian sigma applied to targets (0: as is)
    condition_scale_px: float = Field(4.0, gt=0.0)  # blur sigma (px) that maps to condition 1


class TrainConfig(_Strict):
    """Optimisation and bookkeeping."""

    epochs: int = Field(20, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(50, ge=0)
    grad_clip: float = Field(1.0, gt=0.0)
    val_windows: int = Field(16, ge=1)
    seed: int = 0
    device: str = "auto"
    mode: Literal["paper", "depth-aware"] = "paper"
    amp: bool = True
    num_threads: int = Field(0, ge=0)


class Config(_Strict):
    """Everything needed to rebuild, train and apply a model."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    data: DataConfig = DataConfig()
    depth_aware: DepthAwareConfig = DepthAwareConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, source: str = "config") -> Config:
        try:
            return cls.model_validate(values or {})
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise DqlrError(f"{source}: bad value for '{key}': {first['msg']}") from None

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """Return a copy with dotted keys replaced, e.g. {"train.epochs": 3}."""
        values = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in values or not key:
                raise DqlrError(f"config: unknown key '{dotted}'")
            values[section][key] = value
        return Config.from_dict(values, source="config override")


def load_config(path: str | Path | None) -> Config:
    """Read a YAML config; a missing path gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise DqlrError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DqlrError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if values is not None and not isinstance(values, dict):
        raise DqlrError(f"{path}: a config must be a mapping of sections (model, loss, data, train)")
    return Config.from_dict(values, source=str(path))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
