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

from data_pipeline.loader import ShardLoader
from tokenizer.delta import DeltaState, DeltaTokenizer
from tokenizer.model import frame_psnr
from worldsim.io.progress import progress


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
    # A renderer told the controls (None for one that is not), from frame 0 on its own renders
    # like `closed_loop`: with the clip's tokens but the next clip's controls (what the controls
    # decide), and with "no change" tokens and the clip's controls (the renderer alone, steered).
    other_controls_pooled_psnr_db: float | None = None
    controls_only_pooled_psnr_db: float | None = None

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
            + self._controls_line()
        )

    def _controls_line(self) -> str:
        if self.other_controls_pooled_psnr_db is None or self.controls_only_pooled_psnr_db is None:
            return ""
        return (
            f"\n  told the next clip's controls: {self.other_controls_pooled_psnr_db:.2f} dB; "
            f'"no change" tokens and the clip\'s controls: '
            f"{self.controls_only_pooled_psnr_db:.2f} dB (from frame 0 on its own renders)"
        )


STILL_MARKS, STILL_BATCHES = (1, 4, 16, 64), 8


@torch.no_grad()
def still_scene_errors(model: DeltaTokenizer, first_BCHW: Tensor) -> dict[int, float]:
    """Summed per-clip MSE against `first` after each of STILL_MARKS renders of a still scene
    (told zero controls, by a renderer told them)."""
    b, d = first_BCHW.shape[0], model.cfg.action_dim
    none_B1D = first_BCHW.new_zeros(b, 1, d) if d else None
    tokens = model.encode(first_BCHW[:, None], none_B1D)[:, 0]  # frame 0's tokens: no change
    state, out = DeltaState(first_BCHW, first_BCHW), {}
    for step in range(1, max(STILL_MARKS) + 1):
        action = None if none_B1D is None else none_B1D[:, 0]
        frame, state = model.decode_step(tokens, state, action=action)
        if step in STILL_MARKS:
            out[step] = float((frame - first_BCHW).pow(2).mean(dim=(1, 2, 3)).sum())
    return out


@torch.no_grad()
def evaluate_delta_tokenizer(
    model: DeltaTokenizer, loader: ShardLoader, max_batches: int | None = None
) -> DeltaTokenizerReport:
    model.eval()
    sq: dict[str, float] = {}
    psnr_sum, clips, frames = 0.0, 0, 0
    still: dict[int, float] = {}
    still_clips = 0
    used = torch.zeros(model.num_codes, dtype=torch.bool)
    for i, batch in enumerate(progress(loader, desc="eval delta tokenizer")):
        if max_batches is not None and i >= max_batches:
            break
        x, actions = batch.frames, batch.actions if model.cfg.action_dim else None
        real = x[:, 1:]
        teacher = model.loss(x, actions, closed_loop=0.0).recon[:, 1:]
        guesses = {
            "model": teacher.clamp(-1, 1), "copy": x[:, :-1], "first": x[:, :1].expand_as(real),
            **_closed_loop_renders(model, x, actions, used),
        }  # fmt: skip
        for name, guess in guesses.items():
            sq[name] = sq.get(name, 0.0) + float((guess - real).pow(2).mean(dim=(2, 3, 4)).sum())
        psnr_sum += float(frame_psnr(teacher, real)) * real.shape[0] * real.shape[1]
        if i < STILL_BATCHES:
            for step, error in still_scene_errors(model, x[:, 0]).items():
                still[step] = still.get(step, 0.0) + error
            still_clips += x.shape[0]
        clips, frames = clips + x.shape[0], frames + real.shape[0] * real.shape[1]
    if not frames:
        raise ValueError("evaluation data yielded no clips")

    def pooled(name: str) -> float:
        return 10 * math.log10(4 / max(sq[name] / frames, 1e-10))

    told = model.cfg.action_dim > 0

    return DeltaTokenizerReport(
        checkpoint="", shards="", split="", clips=clips, frames=frames,
        pooled_psnr_db=pooled("model"), psnr_db=psnr_sum / frames,
        copy_pooled_psnr_db=pooled("copy"), closed_loop_pooled_psnr_db=pooled("closed"),
        copy_first_pooled_psnr_db=pooled("first"), codebook_usage=float(used.float().mean()),
        num_codes=model.num_codes, bits_per_frame=model.cfg.bits_per_frame,
        still_pooled_psnr_db={
            k: 10 * math.log10(4 / max(v / still_clips, 1e-10)) for k, v in still.items()
        },
        other_controls_pooled_psnr_db=pooled("other_controls") if told else None,
        controls_only_pooled_psnr_db=pooled("controls_only") if told else None,
    )  # fmt: skip


def _closed_loop_renders(
    model: DeltaTokenizer, frames_BTCHW: Tensor, actions: Tensor | None, used: Tensor
) -> dict[str, Tensor]:
    """Frames 1.. rendered from frame 0 on the renderer's own outputs: with the clip's tokens
    ("closed") and, for a renderer told the controls, with the next clip's controls
    ("other_controls") and with "no change" tokens and the clip's controls ("controls_only").
    The codes the clip's tokens use are marked in `used`."""
    tokens = model.encode(frames_BTCHW, actions)
    used[tokens.flatten().unique()] = True
    out = {"closed": model.reconstruct(frames_BTCHW, tokens, actions)[:, 1:]}
    if actions is not None:
        still = tokens[:, :1].expand_as(tokens)
        other = actions.roll(1, dims=0)
        out["other_controls"] = model.reconstruct(frames_BTCHW, tokens, other)[:, 1:]
        out["controls_only"] = model.reconstruct(frames_BTCHW, still, actions)[:, 1:]
    return out
