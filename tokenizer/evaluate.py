"""Held-out quality of a trained tokenizer: PSNR, SSIM, codebook usage, bits per frame, and a
bicubic down-and-up-sample that spends the same bits per frame as the baseline to beat.

`worldsim eval tokenizer --checkpoint DIR --shards DATA --split test` writes the JSON report and a
PNG that shows original, tokenizer and bicubic frames of the first clips one above the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torchmetrics.functional.image import structural_similarity_index_measure

from data_pipeline.loader import ShardLoader
from tokenizer.model import VideoTokenizer, frame_psnr
from worldsim.io.files import write_json
from worldsim.io.media import to_uint8_clips, write_grid_png
from worldsim.io.progress import progress


@dataclass
class TokenizerReport:
    checkpoint: str
    shards: str
    split: str
    clips: int
    frames: int
    psnr_db: float  # mean over frames of per-frame PSNR, pixels in [-1, 1]
    ssim: float  # mean over frames (torchmetrics, gaussian window 11, data range [0, 1])
    codebook_usage: float  # share of the codebook used at least once over the whole evaluation
    perplexity: float  # exp(entropy) of code use over the whole evaluation
    num_codes: int
    bits_per_frame: float  # tokens per frame x log2(codes)
    bicubic_side: int  # side of the 8-bit RGB thumbnail that spends at most bits_per_frame
    bicubic_psnr_db: float  # PSNR of bicubic down-to-that-side-and-back-up, same frames
    bicubic_ssim: float

    def render(self) -> str:
        return (
            f"tokenizer {self.checkpoint} on {self.shards} [{self.split}]: {self.clips} clips, "
            f"{self.frames} frames\n"
            f"  PSNR {self.psnr_db:.2f} dB, SSIM {self.ssim:.4f}, codebook usage "
            f"{self.codebook_usage:.1%} of {self.num_codes} (perplexity {self.perplexity:.1f}), "
            f"{self.bits_per_frame:.0f} bits/frame\n"
            f"  bicubic {self.bicubic_side}x{self.bicubic_side} at the same bits: "
            f"PSNR {self.bicubic_psnr_db:.2f} dB, SSIM {self.bicubic_ssim:.4f}"
        )


def bicubic_side(bits_per_frame: float, channels: int = 3) -> int:
    """Largest square 8-bit thumbnail that stores no more bits than a frame's tokens."""
    return max(1, math.isqrt(int(bits_per_frame // (8 * channels))))


def bicubic_roundtrip(frames_NCHW: torch.Tensor, side: int) -> torch.Tensor:
    """Down to side x side, quantised to 8 bits like the thumbnail it stands for, and back up."""
    size = frames_NCHW.shape[-1]
    small = F.interpolate(frames_NCHW, size=(side, side), mode="bicubic", antialias=True)
    small = ((small.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    return F.interpolate(small, size=(size, size), mode="bicubic").clamp(-1, 1)


def _ssim(pred_NCHW: torch.Tensor, target_NCHW: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM of images in [-1, 1]."""
    ssim = structural_similarity_index_measure(
        (pred_NCHW + 1) / 2, (target_NCHW + 1) / 2, data_range=1.0, reduction="none"
    )
    assert isinstance(ssim, torch.Tensor)  # a tuple only with return_full_image=True
    return ssim


@torch.no_grad()
def evaluate_tokenizer(
    model: VideoTokenizer, loader: ShardLoader, max_batches: int | None = None
) -> TokenizerReport:
    model.eval()
    num_codes = model.num_codes
    counts = torch.zeros(num_codes, dtype=torch.float64)
    bits = model.cfg.bits_per_frame
    side = bicubic_side(bits)
    sums = {"psnr": 0.0, "ssim": 0.0, "bicubic_psnr": 0.0, "bicubic_ssim": 0.0}
    clips = frames_seen = 0
    for i, batch in enumerate(progress(loader, desc="eval tokenizer", unit="batch")):
        if max_batches is not None and i >= max_batches:
            break
        frames = batch.frames  # (B, T, C, H, W)
        tokens = model.encode(frames)
        recon = model.decode(tokens)
        counts += torch.bincount(tokens.flatten(), minlength=num_codes).double()
        flat = rearrange(frames, "b t c h w -> (b t) c h w")
        flat_recon = rearrange(recon, "b t c h w -> (b t) c h w")
        flat_bicubic = bicubic_roundtrip(flat, side)
        n = flat.shape[0]
        sums["psnr"] += frame_psnr(flat_recon[:, None], flat[:, None]).item() * n
        sums["ssim"] += _ssim(flat_recon, flat).sum().item()
        sums["bicubic_psnr"] += frame_psnr(flat_bicubic[:, None], flat[:, None]).item() * n
        sums["bicubic_ssim"] += _ssim(flat_bicubic, flat).sum().item()
        clips += frames.shape[0]
        frames_seen += n
    if frames_seen == 0:
        raise ValueError("evaluation data yielded no clips")
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    return TokenizerReport(
        checkpoint="",
        shards="",
        split="",
        clips=clips,
        frames=frames_seen,
        psnr_db=sums["psnr"] / frames_seen,
        ssim=sums["ssim"] / frames_seen,
        codebook_usage=(counts > 0).double().mean().item(),
        perplexity=math.exp(entropy),
        num_codes=num_codes,
        bits_per_frame=bits,
        bicubic_side=side,
        bicubic_psnr_db=sums["bicubic_psnr"] / frames_seen,
        bicubic_ssim=sums["bicubic_ssim"] / frames_seen,
    )


@torch.no_grad()
def write_comparison_grid(
    model: VideoTokenizer, loader: ShardLoader, path: str | Path, clips: int = 4
) -> Path:
    """Rows of original, tokenizer and same-bits bicubic frames for the loader's first clips."""
    model.eval()
    frames = next(iter(loader)).frames[:clips]  # (B, T, C, H, W)
    recon = model.decode(model.encode(frames))
    flat = rearrange(frames, "b t c h w -> (b t) c h w")
    bicubic = bicubic_roundtrip(flat, bicubic_side(model.cfg.bits_per_frame))
    bicubic = rearrange(bicubic, "(b t) c h w -> b t c h w", b=frames.shape[0])
    rows = rearrange(torch.stack([frames, recon, bicubic], 1), "b k t c h w -> (b k) t c h w")
    return write_grid_png(list(to_uint8_clips(rows)), path)


def write_report(report: TokenizerReport, path: str | Path) -> Path:
    return write_json(path, asdict(report), indent=2)
