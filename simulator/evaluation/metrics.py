"""Pure world-model metrics on pixel clips in [-1, 1]: per-frame PSNR and SSIM, Genie's ΔtPSNR,
the mean-over-clips curve against horizon, and how much latent actions say about true ones.

Conventions follow `tokenizer.model.frame_psnr`: predictions are clamped to [-1, 1], the peak-to-
peak range is 2 (so PSNR = 10 log10(4 / MSE)), MSE is over C, H, W of one frame, and averages are
taken over per-frame PSNRs, never over pooled MSE.

SSIM is scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=2)` per frame, averaged over channels: the same Gaussian
window (radius 5), the same constants, and the same crop of the border the window does not fit.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (ΔtPSNR, section 4);
Wang et al. 2004, "Image Quality Assessment: From Error Visibility to Structural Similarity".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

PEAK_SQUARED = 4.0  # (max - min)^2 of pixels in [-1, 1]
MIN_MSE = 1e-10  # identical frames would give infinite PSNR; this caps it at 106 dB
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # scikit-image's Gaussian window: radius int(3.5 * 1.5 + 0.5)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def frame_psnr_per_frame(pred_BTCHW: Tensor, target_BTCHW: Tensor) -> Tensor:
    """PSNR (dB) of every frame, (B, T) float; MSE over C, H, W, pixels in [-1, 1]."""
    if pred_BTCHW.shape != target_BTCHW.shape or pred_BTCHW.ndim != 5:
        raise ValueError(
            "pred and target must both be (B, T, C, H, W) of one shape, got "
            f"{tuple(pred_BTCHW.shape)} and {tuple(target_BTCHW.shape)}"
        )
    err = (pred_BTCHW.float().clamp(-1, 1) - target_BTCHW.float()).pow(2).mean(dim=(2, 3, 4))
    return 10 * torch.log10(PEAK_SQUARED / err.clamp_min(MIN_MSE))


def frame_ssim_per_frame(pred_BTCHW: Tensor, target_BTCHW: Tensor) -> Tensor:
    """SSIM of every frame, (B, T) float64, pixels in [-1, 1] (see the module docstring)."""
    if pred_BTCHW.shape != target_BTCHW.shape or pred_BTCHW.ndim != 5:
        raise ValueError(
            "pred and target must both be (B, T, C, H, W) of one shape, got "
            f"{tuple(pred_BTCHW.shape)} and {tuple(target_BTCHW.shape)}"
        )
    b, t, c, h, w = pred_BTCHW.shape
    if min(h, w) < 2 * SSIM_RADIUS + 1:
        raise ValueError(
            f"SSIM's window needs frames of >= {2 * SSIM_RADIUS + 1} pixels, got {h}x{w}"
        )
    x = rearrange(pred_BTCHW.double().clamp(-1, 1), "b t c h w -> (b t) c h w")
    y = rearrange(target_BTCHW.double(), "b t c h w -> (b t) c h w")
    r = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=x.device)
    g = torch.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    g = g / g.sum()
    rows, cols = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(z: Tensor) -> Tensor:  # "valid": only where the whole window fits, as cropped
        return F.conv2d(F.conv2d(z, rows, groups=c), cols, groups=c)

    ux, uy = blur(x), blur(y)
    vx, vy, vxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
    c1, c2 = (SSIM_K1 * 2) ** 2, (SSIM_K2 * 2) ** 2  # data range 2
    ssim = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim.mean(dim=(1, 2, 3)).view(b, t)


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
