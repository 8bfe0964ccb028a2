"""Quantizers turning continuous latents into discrete tokens, chosen by `QuantizerConfig.type`.

All take latents z (..., dim) in fp32 and return a `QuantizerOutput`; `tokenize` and `embed` map
between latents and integer codes without training side effects.

References: van den Oord et al. 2017, "Neural Discrete Representation Learning" (VQ-VAE);
Yu et al. 2022, "Vector-quantized Image Modeling with Improved VQGAN" (l2-normalised codes);
Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple" (FSQ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenizer.config import VQ_UPDATES, QuantizerConfig


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (..., dim) codes, with straight-through gradients to the input
    indices: Tensor  # (...) int64 in [0, num_codes)
    loss: Tensor  # scalar: commitment / codebook terms (0 for FSQ)
    usage: Tensor  # scalar: share of the codebook this batch used
    perplexity: Tensor  # scalar: exp(entropy) of this batch's code histogram


def code_statistics(indices: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    """(usage, perplexity) of a batch of code indices; collapse shows as both dropping."""
    counts = torch.bincount(indices.flatten(), minlength=num_codes).float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return (counts > 0).float().mean(), entropy.exp()


class Quantizer(nn.Module):
    num_codes: int
    dim: int

    def tokenize(self, z: Tensor) -> Tensor:
        """z (..., dim) -> indices (...) int64, without updating any state."""
        raise NotImplementedError

    def embed(self, indices: Tensor) -> Tensor:
        """indices (...) -> codes (..., dim), what the decoder reads."""
        raise NotImplementedError


class FSQ(Quantizer):
    """Each latent dimension is squashed to a bounded range and rounded to one of `levels[i]`
    values; the code index is the mixed-radix number of the digits. No codebook, so no loss and
    no collapse."""

    def __init__(self, levels: list[int], entropy_weight: float = 0.0) -> None:
        super().__init__()
        self.entropy_weight = entropy_weight
        self.num_codes = math.prod(levels)
        self.dim = len(levels)
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        # Plain constants of the levels, rebuilt from the config on load; kept out of checkpoints.
        self.levels: Tensor
        self.basis: Tensor
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    def _half_width(self) -> Tensor:
        return (self.levels // 2).float()

    def _bound(self, z: Tensor) -> Tensor:
        """Squash to (-L/2, L/2) (shifted by half a step for even L so rounding yields L values)."""
        levels = self.levels.float()
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = (self.levels % 2 == 0).float() * 0.5
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _digits_to_indices(self, digits: Tensor) -> Tensor:
        return ((digits.round().long() + self.levels // 2) * self.basis).sum(dim=-1)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        return self._digits_to_indices(codes * self._half_width())

    def forward(self, z: Tensor) -> QuantizerOutput:
        bounded = self._bound(z)
        digits = bounded + (bounded.round() - bounded).detach()  # straight-through rounding
        indices = self._digits_to_indices(digits.detach())
        usage, perplexity = code_statistics(indices, self.num_codes)
        quantized = digits / self._half_width()  # in [-1, 1]
        loss = z.new_zeros(())
        if self.entropy_weight > 0 and self.training:
            loss = self.entropy_weight * self._entropy_gap(bounded)
        return QuantizerOutput(quantized, indices, loss, usage, perplexity)

    def _entropy_gap(self, bounded: Tensor) -> Tensor:
        """1 - normalised entropy of the batch's soft code histogram. Plain FSQ leaves spreading
        codes over its grid to the data: on CoinRun's few colours it uses under half of 125
        codes and 10% of 1000. Rewarding an even batch histogram makes the encoder spend its
        bits (MAGVIT-v2's entropy term, here on FSQ's product of per-digit soft assignments)."""
        flat = bounded.reshape(-1, self.dim)
        joint = flat.new_ones(flat.shape[0], 1)
        for i, level in enumerate(self.levels.tolist()):
            values = torch.arange(level, device=flat.device, dtype=flat.dtype) - level // 2
            digit = torch.softmax(-((flat[:, i : i + 1] - values) ** 2) / 0.1, dim=-1)
            joint = (digit[:, :, None] * joint[:, None, :]).flatten(1)  # (N, codes so far)
        probs = joint.mean(0)
        entropy = -(probs * probs.clamp_min(1e-9).log()).sum()
        return 1 - entropy / math.log(self.num_codes)

    def tokenize(self, z: Tensor) -> Tensor:
        return self._digits_to_indices(self._bound(z))

    def embed(self, indices: Tensor) -> Tensor:
        digits = indices.unsqueeze(-1) // self.basis % self.levels - self.levels // 2
        return digits.float() / self._half_width()


class VectorQuantizer(Quantizer):
    """Nearest code by cosine similarity among l2-normalised codes. Codes follow the inputs
    assigned to them either by an EMA of their sum (`update="ema"`) or by a codebook loss
    (`"grad"`); both add a commitment loss. The first training batch initialises the codebook,
    and a code unused for `dead_after` training steps restarts at a random encoder output of the
    current batch plus noise, so the codebook cannot collapse onto a few entries.

    Under DDP, restarts and EMA updates are per process; DDP broadcasts buffers from rank 0 at
    every forward, so "ema" stays consistent across processes while "grad" codebooks may drift.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        update: str = "ema",
        ema_decay: float = 0.99,
        commitment: float = 0.25,
        dead_after: int = 50,
        restart_noise: float = 0.02,
    ) -> None:
        super().__init__()
        if update not in VQ_UPDATES:
            raise ValueError(f"unknown vq update {update!r}; choose one of {list(VQ_UPDATES)}")
        self.num_codes, self.dim = num_codes, dim
        self.update, self.ema_decay, self.commitment = update, ema_decay, commitment
        self.dead_after, self.restart_noise = dead_after, restart_noise
        init = F.normalize(torch.randn(num_codes, dim), dim=-1)
        self.codebook: Tensor
        self.ema_sum: Tensor
        if update == "grad":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            # With unit-norm codes only the direction of the running sum matters, so no counts.
            self.register_buffer("ema_sum", init.clone())
        self.idle_steps: Tensor
        self.initialised: Tensor
        self.register_buffer("idle_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(False))

    def _codes(self) -> Tensor:
        return F.normalize(self.codebook, dim=-1)

    def tokenize(self, z: Tensor) -> Tensor:
        return (F.normalize(z, dim=-1) @ self._codes().T).argmax(dim=-1)

    def embed(self, indices: Tensor) -> Tensor:
        return self._codes()[indices]

    def forward(self, z: Tensor) -> QuantizerOutput:
        shape = z.shape[:-1]
        z_flat = F.normalize(z.reshape(-1, self.dim), dim=-1)
        if self.training and not bool(self.initialised):
            self._restart(torch.ones(self.num_codes, dtype=torch.bool, device=z.device), z_flat)
            self.initialised.fill_(True)
        codes = self._codes()
        indices = (z_flat @ codes.T).argmax(dim=-1)
        chosen = codes[indices]
        loss = self.commitment * F.mse_loss(z_flat, chosen.detach())
        if self.update == "grad":
            loss = loss + F.mse_loss(chosen, z_flat.detach())
        usage, perplexity = code_statistics(indices, self.num_codes)
        if self.training:
            error = 1 - (z_flat * chosen).sum(dim=-1)  # cosine distance to the chosen code
            self._learn(z_flat.detach(), indices, error.detach())
        quantized = z_flat + (chosen - z_flat).detach()
        return QuantizerOutput(
            quantized.reshape(*shape, self.dim), indices.reshape(shape), loss, usage, perplexity
        )

    @torch.no_grad()
    def _learn(self, z_flat: Tensor, indices: Tensor, error: Tensor) -> None:
        if self.update == "ema":
            sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, z_flat)
            self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
            self.codebook.copy_(F.normalize(self.ema_sum, dim=-1))
        used = torch.bincount(indices, minlength=self.num_codes) > 0
        self.idle_steps.add_(1).masked_fill_(used, 0)
        dead = self.idle_steps >= self.dead_after
        if dead.any():
            self._restart(dead, z_flat, error)

    @torch.no_grad()
    def _restart(self, dead: Tensor, z_flat: Tensor, error: Tensor | None = None) -> None:
        """Move the `dead` codes onto batch inputs drawn in proportion to their quantisation
        error. Uniform draws land on the dominant content (flat backgrounds) next to live codes,
        lose every argmin there and die again; the worst-served inputs are where a code helps.
        The noise keeps codes restarted from the same input apart."""
        weights = torch.ones_like(z_flat[:, 0]) if error is None else error.clamp_min(1e-6)
        pick = torch.multinomial(weights, int(dead.sum()), replacement=True)
        fresh = z_flat[pick] + self.restart_noise * torch.randn_like(z_flat[pick])
        fresh = F.normalize(fresh, dim=-1)
        self.codebook.data[dead] = fresh
        if self.update == "ema":
            self.ema_sum[dead] = fresh
        self.idle_steps[dead] = 0


def _fsq(cfg: QuantizerConfig) -> Quantizer:
    return FSQ(cfg.levels, entropy_weight=cfg.entropy_weight)


def _vq(cfg: QuantizerConfig) -> Quantizer:
    return VectorQuantizer(
        cfg.codebook_size,
        cfg.code_dim,
        update=cfg.update,
        ema_decay=cfg.ema_decay,
        commitment=cfg.commitment,
        dead_after=cfg.dead_after,
        restart_noise=cfg.restart_noise,
    )


QUANTIZERS: dict[str, Callable[[QuantizerConfig], Quantizer]] = {"fsq": _fsq, "vq": _vq}


def build_quantizer(cfg: QuantizerConfig) -> Quantizer:
    if cfg.type not in QUANTIZERS:
        raise ValueError(f"unknown quantizer type {cfg.type!r}; choose one of {sorted(QUANTIZERS)}")
    return QUANTIZERS[cfg.type](cfg)
