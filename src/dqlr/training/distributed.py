"""Training on several processes (torchrun): the process group and what each rank needs to know.

torchrun (alone, or started once per node by srun) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT; the process group is made from them with torch's env:// method for the length of
a run and taken down after it. A group the caller set up already is used as it is and left up.
Without torchrun the world is one process and nothing here talks to anyone.

`Config.train.batch_size` stays the global batch: every rank draws the same random windows and
reads only its own contiguous share, so N processes train like one process on the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dqlr.errors import DqlrError
from dqlr.runtime import pick_device


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run; the default is a run of one process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0  # the rank on this machine, which picks its GPU

    @property
    def main(self) -> bool:
        """The rank that writes files (checkpoints, logs, plots) and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, name: str) -> torch.device:
        """The run's device for this rank: with several processes on CUDA, GPU number LOCAL_RANK."""
        device = pick_device(name)
        if not self.distributed or device.type != "cuda":
            return device
        if device.index is not None:
            raise DqlrError(
                f"--device {name}: under torchrun each process takes GPU LOCAL_RANK; pass cuda or auto"
            )
        if self.local_rank >= torch.cuda.device_count():
            raise DqlrError(
                f"torchrun: process {self.local_rank} on this machine has no GPU of its own "
                f"({torch.cuda.device_count()} found); start at most that many per node"
            )
        return torch.device("cuda", self.local_rank)

    def share(self, size: int) -> range:
        """This rank's contiguous part of a global batch of `size` (all parts the same size, so the
        mean of the ranks' mean losses is the mean loss of the whole batch)."""
        if size % self.world:
            raise DqlrError(
                f"train.batch_size {size} does not split evenly over {self.world} processes; "
                f"use a multiple of {self.world}"
            )
        part = size // self.world
        return range(self.rank * part, (self.rank + 1) * part)

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (so all ranks stop at the same step)."""
        if not self.distributed:
            return flag
        value = torch.tensor([float(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value[0] > 0)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The average over ranks of each value (the same keys, in the same order, on every rank)."""
        if not self.distributed or not values:
            return values
        total = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(total)
        return {key: float(v) / self.world for key, v in zip(values, total.tolist(), strict=True)}

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _from_environment() -> Ranks:
    def number(key: str) -> int:
        value = os.environ.get(key, "0")
        try:
            return int(value)
        except ValueError:
            raise DqlrError(f"torchrun: environment variable {key}={value!r} is not a number") from None

    return Ranks(number("RANK"), max(number("WORLD_SIZE"), 1), number("LOCAL_RANK"))


@contextmanager
def process_group(device: str = "auto") -> Iterator[Ranks]:
    """The ranks of this run, with torch's process group up for the block when there are several.

    Backends: gloo on the CPU; on GPUs NCCL for tensors and gloo for the few CPU-side numbers
    (stop flags, logged means). Under CUDA the rank's GPU is the current device inside the block.
    """
    if dist.is_available() and dist.is_initialized():  # the caller's group: use it, leave it up
        ranks = Ranks(dist.get_rank(), dist.get_world_size(), _from_environment().local_rank)
        with _on_device(ranks.device(device)):
            yield ranks
        return
    ranks = _from_environment()
    if not ranks.distributed:
        yield ranks
        return
    if not dist.is_available():
        raise DqlrError("torchrun: this torch build has no torch.distributed")
    chosen = ranks.device(device)
    with _on_device(chosen):
        dist.init_process_group(
            "cpu:gloo,cuda:nccl" if chosen.type == "cuda" else "gloo", init_method="env://"
        )
        try:
            yield ranks
        finally:
            dist.destroy_process_group()


@contextmanager
def _on_device(device: torch.device) -> Iterator[None]:
    """Make the rank's GPU the current CUDA device for the block (NCCL and CUDA's random state
    then touch that GPU alone), and put the previous one back after."""
    with ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(torch.cuda.device(device))
        yield
