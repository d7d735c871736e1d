"""Q: vector quantizer with a learned dictionary of k codes (VQ-VAE, van den Oord et al. 2017).

Each spatial position of the code map is replaced by its nearest dictionary entry; the gradient passes
straight through to the encoder. Options that make it train better than the plain version: EMA
dictionary updates, k-means initialisation from the first training latents, and restarting codes
nobody uses with latents of the current batch. Written here in ~100 lines rather than taken from
vector-quantize-pytorch so that its state and DDP behaviour stay in our hands and the package keeps
to torch alone.

Under DDP (`distributed` set by the trainer) every rank keeps the same dictionary: the k-means start
and the restarts draw from the latents of the whole global batch (gathered in rank order, so they
are those a single process would see), the EMA counts and sums are summed over ranks, and rank 0's
random picks are broadcast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def kmeans(vectors: Tensor, k: int, iterations: int = 10) -> Tensor:
    """Lloyd's k-means on rows of `vectors`; returns k centres (random rows when there are too few)."""
    pick = torch.randint(0, vectors.shape[0], (k,), device=vectors.device)
    centres = vectors[pick].clone()
    for _ in range(iterations):
        assign = torch.cdist(vectors, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, assign, vectors)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class VectorQuantizer(nn.Module):
    cluster_size: Tensor  # buffers, declared for the type checker
    embed_sum: Tensor
    initialised: Tensor

    def __init__(
        self,
        size: int,
        dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        kmeans_init: bool = True,
        dead_code_restart: bool = True,
        dead_code_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.size, self.dim, self.beta = size, dim, beta
        self.ema, self.decay = ema, decay
        self.kmeans_init, self.dead_code_restart = kmeans_init, dead_code_restart
        self.dead_code_threshold = dead_code_threshold
        self.codebook = nn.Parameter(torch.randn(size, dim) * 0.1, requires_grad=not ema)
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("embed_sum", self.codebook.detach().clone())
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        self.distributed = False  # set by a DDP trainer; not part of the model's state

    def _summed(self, tensor: Tensor) -> Tensor:
        """Summed over ranks under DDP (in place), as is otherwise."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def _gathered(self, flat: Tensor) -> Tensor:
        """The latents of the whole global batch, in rank order (ranks hold equal shares)."""
        if not self.distributed:
            return flat
        parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, flat.contiguous())
        return torch.cat(parts)

    def _from_rank0(self, tensor: Tensor) -> Tensor:
        """Rank 0's copy under DDP (in place), so random picks agree even if the ranks' streams differ."""
        if self.distributed:
            dist.broadcast(tensor, 0)
        return tensor

    @torch.no_grad()
    def _initialise(self, flat: Tensor) -> None:
        flat = self._gathered(flat)
        sample = flat[torch.randperm(flat.shape[0], device=flat.device)[:8192]]
        self.codebook.data.copy_(self._from_rank0(kmeans(sample, self.size)))
        self.embed_sum.copy_(self.codebook.data)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, flat: Tensor, index: Tensor) -> None:
        counts = self._summed(torch.bincount(index, minlength=self.size).float())
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            sums = self._summed(torch.zeros_like(self.embed_sum).index_add_(0, index, flat))
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + 1e-5) / (total + self.size * 1e-5) * total
            self.codebook.data.copy_(self.embed_sum / smoothed[:, None])
        if self.dead_code_restart:
            dead = self.cluster_size < self.dead_code_threshold
            if dead.any():  # cluster_size is the same on every rank: all of them gather here
                latents = self._gathered(flat)
                pick = torch.randint(0, latents.shape[0], (int(dead.sum()),), device=flat.device)
                pick = self._from_rank0(pick)
                self.codebook.data[dead] = latents[pick]
                self.embed_sum[dead] = latents[pick]
                self.cluster_size[dead] = 1.0

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest dictionary entry for each row. In float32 even under autocast: in
        bf16 the distances of near codes tie or swap."""
        book = self.codebook.float()
        with torch.autocast(flat.device.type, enabled=False):
            flat = flat.float()
            distance = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
        return distance.argmin(1)

    def forward(self, codes: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
        """codes (B, C, H, W) -> (quantized with straight-through gradient, VQ loss, usage stats)."""
        b, c, h, w = codes.shape
        flat = codes.permute(0, 2, 3, 1).reshape(-1, c).float()
        if self.training and not bool(self.initialised):
            self._initialise(flat.detach())
        index = self.nearest(flat.detach())
        chosen = self.codebook[index].float()
        loss = self.beta * F.mse_loss(flat, chosen.detach())
        if not self.ema:
            loss = loss + F.mse_loss(chosen, flat.detach())
        if self.training:
            self._update(flat.detach(), index)
        # Straight-through: forward the dictionary entry, pass the gradient to the code unchanged.
        quantized = flat + (chosen - flat).detach() if codes.requires_grad else chosen
        probs = torch.bincount(index, minlength=self.size).float() / index.numel()
        stats = {
            "perplexity": float(torch.exp(-(probs * torch.log(probs + 1e-10)).sum())),
            "codes_used": float((probs > 0).sum()),
            "dead_codes": float((self.cluster_size < self.dead_code_threshold).sum()),
        }
        quantized = quantized.reshape(b, h, w, c).permute(0, 3, 1, 2).to(codes.dtype)
        return quantized.contiguous(), loss, stats
