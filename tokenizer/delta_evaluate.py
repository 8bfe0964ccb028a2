"""Held-out quality of a delta tokenizer (tokenizer/delta.py): how well it renders each frame
from the real past and its tokens, against copying the last real frame, and how well it renders
a whole clip from the first frame on its own outputs, against copying the first frame.

`worldsim eval tokenizer --checkpoint DIR --shards DATA` dispatches here for a delta tokenizer.
PSNRs are pooled (from the mean squared error over every frame scored), where motion shows;
the mean of per-frame PSNRs, which still frames dominate, is given for the teacher-forced one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from data_pipeline.loader import ShardLoader
from tokenizer.delta import DeltaState, DeltaTokenizer
from tokenizer.model import frame_psnr


@dataclass
class DeltaTokenizerReport:
    checkpoint: str
    shards: str
    split: str
    clips: int
    frames: int  # frames rendered (frames 1.. of every clip)
    # Frame t+1 from the real frames t-1, t and its tokens (the renderer given the real past).
    pooled_psnr_db: float
    psnr_db: float  # mean over frames of per-frame PSNR
    copy_pooled_psnr_db: float  # copying the real frame t
    # Frames 1.. from frame 0 and the clip's tokens, each from the renderer's own previous frames
    # (what a world with a perfect dynamics model shows).
    closed_loop_pooled_psnr_db: float
    copy_first_pooled_psnr_db: float  # copying frame 0
    # A still scene: frame 0 rendered again and again from its own "no change" tokens, as a
    # world shows a level while nothing is pressed; pooled PSNR against frame 0 after
    # STILL_MARKS renders (first STILL_BATCHES batches). A renderer without drift stays high.
    still_pooled_psnr_db: dict[int, float]
    codebook_usage: float
    num_codes: int
    bits_per_frame: float

    def render(self) -> str:
        return (
            f"delta tokenizer {self.checkpoint} on {self.shards} [{self.split}]: {self.clips} "
            f"clips, {self.frames} frames rendered, {self.bits_per_frame:.0f} bits/frame, "
            f"{self.codebook_usage:.1%} of {self.num_codes} codes in use\n"
            f"  from the real past: pooled PSNR {self.pooled_psnr_db:.2f} dB (mean of frames "
            f"{self.psnr_db:.2f}); copying the last frame {self.copy_pooled_psnr_db:.2f} dB\n"
            f"  from frame 0 on its own renders: pooled PSNR {self.closed_loop_pooled_psnr_db:.2f}"
            f" dB; copying frame 0 {self.copy_first_pooled_psnr_db:.2f} dB\n"
            "  a still scene against its first frame after "
            + ", ".join(f"{k}: {v:.2f}" for k, v in self.still_pooled_psnr_db.items())
            + " renders (dB)"
        )


STILL_MARKS, STILL_BATCHES = (1, 4, 16, 64), 8


@torch.no_grad()
def still_scene_errors(model: DeltaTokenizer, first_BCHW: Tensor) -> dict[int, float]:
    """Summed per-clip MSE against `first` after each of STILL_MARKS renders of a still scene."""
    tokens = model.encode(first_BCHW[:, None])[:, 0]  # frame 0's tokens: no change
    state, out = DeltaState(first_BCHW, first_BCHW), {}
    for step in range(1, max(STILL_MARKS) + 1):
        frame, state = model.decode_step(tokens, state)
        if step in STILL_MARKS:
            out[step] = float((frame - first_BCHW).pow(2).mean(dim=(1, 2, 3)).sum())
    return out


@torch.no_grad()
def evaluate_delta_tokenizer(
    model: DeltaTokenizer, loader: ShardLoader, max_batches: int | None = None
) -> DeltaTokenizerReport:
    model.eval()
    sq = dict.fromkeys(("model", "copy", "closed", "first"), 0.0)
    psnr_sum, clips, frames = 0.0, 0, 0
    still: dict[int, float] = {}
    still_clips = 0
    used = torch.zeros(model.num_codes, dtype=torch.bool)
    for i, batch in enumerate(tqdm(loader, desc="eval delta tokenizer", disable=None)):
        if max_batches is not None and i >= max_batches:
            break
        x = batch.frames
        real = x[:, 1:]
        teacher = model.loss(x, closed_loop=0.0).recon[:, 1:]
        closed = model.reconstruct(x)[:, 1:]
        guesses = {
            "model": teacher.clamp(-1, 1), "copy": x[:, :-1], "closed": closed,
            "first": x[:, :1].expand_as(real),
        }  # fmt: skip
        for name, guess in guesses.items():
            sq[name] += float((guess - real).pow(2).mean(dim=(2, 3, 4)).sum())
        psnr_sum += float(frame_psnr(teacher, real)) * real.shape[0] * real.shape[1]
        if i < STILL_BATCHES:
            for step, error in still_scene_errors(model, x[:, 0]).items():
                still[step] = still.get(step, 0.0) + error
            still_clips += x.shape[0]
        used[model.encode(x).flatten().unique()] = True
        clips, frames = clips + x.shape[0], frames + real.shape[0] * real.shape[1]
    if not frames:
        raise ValueError("evaluation data yielded no clips")

    def pooled(name: str) -> float:
        return 10 * math.log10(4 / max(sq[name] / frames, 1e-10))

    return DeltaTokenizerReport(
        checkpoint="", shards="", split="", clips=clips, frames=frames,
        pooled_psnr_db=pooled("model"), psnr_db=psnr_sum / frames,
        copy_pooled_psnr_db=pooled("copy"), closed_loop_pooled_psnr_db=pooled("closed"),
        copy_first_pooled_psnr_db=pooled("first"), codebook_usage=float(used.float().mean()),
        num_codes=model.num_codes, bits_per_frame=model.cfg.bits_per_frame,
        still_pooled_psnr_db={
            k: 10 * math.log10(4 / max(v / still_clips, 1e-10)) for k, v in still.items()
        },
    )  # fmt: skip
