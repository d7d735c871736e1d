"""Device choice and numeric set-up, shared by training and inference.

The library never changes process-wide state for good: what a computation needs (flushing
denormal floats, a thread count, a seeded random stream) is set by a context manager and put back
as it was on exit, so a Jupyter kernel, napari or a Dask worker that calls dqlr keeps its own
settings.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqlr.errors import DqlrError

if TYPE_CHECKING:
    import torch


def surely_cpu(name: Any) -> bool:
    """Whether `name` can only mean the CPU, decided without importing torch (1.7 s): "cpu", or
    "auto" on Linux without the NVIDIA driver (which CUDA needs; it shows in /proc/driver)."""
    if str(name) == "cpu":
        return True
    return str(name) == "auto" and sys.platform == "linux" and not Path("/proc/driver/nvidia").exists()


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """ "auto" takes the first CUDA GPU if there is one, else the CPU; names are checked."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DqlrError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DqlrError(f"device '{name}' asked for, but this machine has no CUDA GPU")
    return device


def mixed_precision(device: torch.device) -> torch.dtype | None:
    """The autocast type a training step may use on `device`, or None (full precision).

    CUDA: bf16 where supported, else fp16 (with a gradient scaler). CPU: bf16 only where the
    processor computes it natively (AVX512-BF16 or AMX): there it makes the default's training step
    about twice as fast (benchmarks/results/train_speed.md); elsewhere bf16 is emulated and slower
    than float32.
    """
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        native = [
            getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        ]
        if any(check is not None and check() for check in native):
            return torch.bfloat16
    return None


def _flushes_denormals() -> bool:
    """Whether denormal floats are flushed to zero now (torch has a setter but no getter)."""
    import torch

    tiny = torch.tensor([1e-40], dtype=torch.float32)
    return bool((tiny * 1.0)[0] == 0.0)


@contextmanager
def fast_math(num_threads: int = 0) -> Iterator[None]:
    """Flush denormals and optionally set the CPU thread count, for the duration of the block.

    Denormal gradients and Adam moments made CPU training 25x slower (measured: 12.4 s vs 0.47 s
    for ten steps of the test model on 2 cores). num_threads 0 keeps torch's current count.
    """
    import torch

    flushed, threads = _flushes_denormals(), torch.get_num_threads()
    torch.set_flush_denormal(True)
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_flush_denormal(flushed)
        if num_threads:
            torch.set_num_threads(threads)


def random_state() -> dict[str, object]:
    """torch's CPU and CUDA random states, as plain tensors (safe to save with weights_only)."""
    import torch

    state: dict[str, object] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, object]) -> None:
    """Put back what random_state() returned; CUDA states only where this machine has the GPUs."""
    import torch

    cpu = state["cpu"]
    assert isinstance(cpu, torch.Tensor)
    torch.set_rng_state(cpu)
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():  # type: ignore[arg-type]
        torch.cuda.set_rng_state_all(cuda)  # type: ignore[arg-type]


@contextmanager
def own_random_streams(state: dict[str, object] | None = None, seed: int | None = None) -> Iterator[None]:
    """Run the block on random streams of its own (a saved state, or a seed), then put the
    caller's streams back, so a run neither disturbs nor depends on the caller's random draws."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if state is not None:
            set_random_state(state)
        if seed is not None:
            torch.manual_seed(seed)
        yield
