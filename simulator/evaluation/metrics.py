"""Pure world-model metrics on pixel clips in [-1, 1]: per-frame PSNR, Genie's ΔtPSNR, the
mean-over-clips PSNR-vs-horizon curve, and how much latent actions say about true ones.

Conventions follow `tokenizer.model.frame_psnr`: predictions are clamped to [-1, 1], the peak-to-
peak range is 2 (so PSNR = 10 log10(4 / MSE)), MSE is over C, H, W of one frame, and averages are
taken over per-frame PSNRs, never over pooled MSE.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (ΔtPSNR, section 4).
"""

from __future__ import annotations

import torch
from torch import Tensor

PEAK_SQUARED = 4.0  # (max - min)^2 of pixels in [-1, 1]
MIN_MSE = 1e-10  # identical frames would give infinite PSNR; this caps it at 106 dB


def frame_psnr_per_frame(pred_BTCHW: Tensor, target_BTCHW: Tensor) -> Tensor:
    """PSNR (dB) of every frame, (B, T) float; MSE over C, H, W, pixels in [-1, 1]."""
    if pred_BTCHW.shape != target_BTCHW.shape or pred_BTCHW.ndim != 5:
        raise ValueError(
            "pred and target must both be (B, T, C, H, W) of one shape, got "
            f"{tuple(pred_BTCHW.shape)} and {tuple(target_BTCHW.shape)}"
        )
    err = (pred_BTCHW.float().clamp(-1, 1) - target_BTCHW.float()).pow(2).mean(dim=(2, 3, 4))
    return 10 * torch.log10(PEAK_SQUARED / err.clamp_min(MIN_MSE))


def delta_t_psnr(
    real_BTCHW: Tensor, gen_inferred_BTCHW: Tensor, gen_random_BTCHW: Tensor, t: int = 4
) -> float:
    """Genie's controllability: mean over clips of PSNR(x_t, x̂_t) - PSNR(x_t, x̂'_t).

    All three are clips of frames 0..T-1 whose frame 0 is the one prompt frame; x̂ was generated
    with the latent actions the LAM infers from the real clip, x̂' with uniformly random latent
    actions, by identical samplers and seeds. Frame t is the t-th generated frame.
    """
    length = real_BTCHW.shape[1] if real_BTCHW.ndim == 5 else 0
    if t < 1 or length < t + 1:
        raise ValueError(
            f"ΔtPSNR at t={t} needs clips of at least {t + 1} frames (prompt + {t} generated), "
            f"got {length}"
        )
    inferred = frame_psnr_per_frame(gen_inferred_BTCHW[:, t : t + 1], real_BTCHW[:, t : t + 1])
    random = frame_psnr_per_frame(gen_random_BTCHW[:, t : t + 1], real_BTCHW[:, t : t + 1])
    return float((inferred - random).mean())


class CurveMeter:
    """Mean over clips of a per-position PSNR, accumulated batch by batch: the PSNR-vs-horizon
    curve. Position k of the curve is the k-th column of every `add`ed (B, K) tensor."""

    def __init__(self) -> None:
        self._sum: Tensor | None = None  # (K,) float64
        self.clips = 0

    def add(self, psnr_BK: Tensor) -> None:
        if psnr_BK.ndim != 2:
            raise ValueError(f"expected PSNR of shape (B, K), got {tuple(psnr_BK.shape)}")
        sums = psnr_BK.detach().double().sum(dim=0).cpu()
        if self._sum is not None and self._sum.shape != sums.shape:
            raise ValueError(
                f"curve length changed from {self._sum.shape[0]} to {sums.shape[0]} positions"
            )
        self._sum = sums if self._sum is None else self._sum + sums
        self.clips += psnr_BK.shape[0]

    def mean(self) -> list[float]:
        if self._sum is None or self.clips == 0:
            raise ValueError("no clips were added to the curve")
        return (self._sum / self.clips).tolist()


def entropy_bits(counts: Tensor) -> float:
    """Shannon entropy (bits) of the distribution proportional to non-negative `counts`."""
    p = counts.double().flatten()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum()) if p.numel() else 0.0


def mutual_information_bits(joint_AK: Tensor) -> float:
    """I(A; K) in bits from a contingency table of counts (rows: one variable's values, columns:
    the other's): H(A) + H(K) - H(A, K). 0 when independent; at most min(H(A), H(K))."""
    if joint_AK.ndim != 2:
        raise ValueError(f"expected a 2-D table of counts, got shape {tuple(joint_AK.shape)}")
    return entropy_bits(joint_AK.sum(1)) + entropy_bits(joint_AK.sum(0)) - entropy_bits(joint_AK)
