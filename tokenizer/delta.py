"""The delta tokenizer: frames rendered from the previous frames plus a few tokens of change.

The token-grid tokenizer (tokenizer/model.py) re-describes every 4-px patch in every frame, so a
view that scrolls by 0.5-2.5 px a step re-quantizes every background token, and a dynamics model
over those ids sees motion as random token changes. Here motion is done where it is cheap: a
convolutional renderer reads the two previous frames and warps the last one by a flow field it
predicts, then adds a residual, and the only thing it is told about frame t+1 is a handful of
tokens (`tokens` FSQ codes, 28 bits by default) that an encoder reads from frames t-1, t, t+1.
Those tokens carry what the past does not predict (which way the view moves, what appears), and
they are what the dynamics model predicts from the actions. Nothing here is game-specific: the
renderer learns its flows from video by MSE.

Frame 0 has no past: its tokens encode "no change" (the encoder reads frame 0 three times) and
the renderer starts from the real frame, which the engine is given as its prompt. `encode` maps a
clip to tokens (B, T, g, g) like the grid tokenizer, so token shards, the dynamics model and the
engine take them unchanged; `start` / `decode_step` render a stream one frame at a time from
pixels, and `reconstruct` renders a real clip's tokens from its first frame (the ceiling of a
world whose dynamics were perfect).

References: Micheli et al. 2024, "Efficient World Models with Context-Aware Tokenization"
(Delta-IRIS: a decoder conditioned on the previous frame, 4 tokens of change per frame);
Mentzer et al. 2023 (FSQ); Perez et al. 2018 (FiLM); Jaderberg et al. 2015 (differentiable
warping, "Spatial Transformer Networks").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tokenizer.delta_config import DeltaTokenizerConfig
from tokenizer.model import TokenizerOutput, check_frames, check_token_grid, frame_psnr
from tokenizer.quantizers import FSQ, code_statistics
from worldsim.nn.frames import ResBlock
from worldsim.nn.pretrained import PretrainedModel

# A pixel "changes" between frames when a channel moves by more than this ([-1, 1] scale: about
# 13 of 255 levels), above the noise of video compression and below any visible edit.
CHANGED_PIXEL = 0.1


@dataclass(frozen=True, eq=False)  # holds tensors
class DeltaState:
    """What the renderer reads to draw the next frame: the two newest frames (B, C, H, W)."""

    previous_BCHW: Tensor
    current_BCHW: Tensor


class FiLMBlock(nn.Module):
    """ResBlock whose hidden layer is scaled and shifted by a conditioning vector (FiLM). The
    modulation starts random, not at zero: at zero no gradient reaches the tokens, and the
    change encoder never leaves its first code (measured: 1 of 25 codes in use after 200 steps)."""

    def __init__(self, channels: int, cond_width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(cond_width, 2 * channels)

    def forward(self, x: Tensor, cond_BD: Tensor) -> Tensor:
        scale, shift = rearrange(self.film(cond_BD), "b (two c) -> two b c 1 1", two=2)
        h = self.conv1(F.silu(x)) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


def warp(frames_BCHW: Tensor, flow_B2HW: Tensor, mode: str = "bilinear") -> Tensor:
    """Backward warp: output pixel (y, x) reads the input at (y + flow_y, x + flow_x),
    interpolated by `mode` ("bilinear" or "bicubic"), edges repeated."""
    b, _, h, w = frames_BCHW.shape
    ys = torch.arange(h, device=frames_BCHW.device, dtype=flow_B2HW.dtype)
    xs = torch.arange(w, device=frames_BCHW.device, dtype=flow_B2HW.dtype)
    x = xs.view(1, 1, w) + flow_B2HW[:, 0]
    y = ys.view(1, h, 1) + flow_B2HW[:, 1]
    grid = torch.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)
    return F.grid_sample(
        frames_BCHW, grid.to(frames_BCHW.dtype), mode, padding_mode="border", align_corners=False
    )


class DeltaTokenizer(PretrainedModel):
    """Frames <-> delta tokens, rendered from pixels. `forward(frames)` is the training loss."""

    def __init__(self, cfg: DeltaTokenizerConfig | Mapping[str, Any]) -> None:
        super().__init__()
        cfg = (
            cfg
            if isinstance(cfg, DeltaTokenizerConfig)
            else DeltaTokenizerConfig.from_dict(dict(cfg))
        )
        cfg.validate()
        self.register_to_config(cfg=asdict(cfg))
        self.cfg = cfg
        w, q, side = cfg.width, len(cfg.levels), cfg.image_size // 16
        # The change encoder reads frames t-1, t, t+1 and the difference t+1 - t.
        self.change_encoder = nn.Sequential(
            nn.Conv2d(4 * cfg.channels, w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(4 * w, 4 * w, 4, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(4 * w * side * side, cfg.tokens * q),
        )  # fmt: skip
        self.quantizer = FSQ(cfg.levels)
        self.cond = nn.Sequential(
            nn.Linear(cfg.tokens * q, cfg.cond_width), nn.SiLU(),
            nn.Linear(cfg.cond_width, cfg.cond_width),
        )  # fmt: skip
        # The renderer: a U-Net over frames t-1 and t, modulated by the tokens at every scale.
        self.in_full = nn.Sequential(nn.Conv2d(2 * cfg.channels, w, 3, padding=1), ResBlock(w))
        self.in_half = nn.Sequential(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), ResBlock(2 * w))
        self.in_quarter = nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1)
        self.quarter = nn.ModuleList(FiLMBlock(4 * w, cfg.cond_width) for _ in range(cfg.blocks))
        self.up_half = nn.Sequential(nn.Conv2d(4 * w, 8 * w, 3, padding=1), nn.PixelShuffle(2))
        self.merge_half = nn.Conv2d(4 * w, 2 * w, 1)
        self.film_half = FiLMBlock(2 * w, cfg.cond_width)
        self.up_full = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.PixelShuffle(2))
        self.merge_full = nn.Conv2d(2 * w, w, 1)
        self.film_full = FiLMBlock(w, cfg.cond_width)
        self.out = nn.Conv2d(w, 2 + cfg.channels, 3, padding=1)  # flow (x, y) + residual
        for param in self.out.parameters():  # untrained: copy the last frame
            nn.init.zeros_(param)

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def freeze_tokens(self) -> None:
        """Stop training the change encoder, which decides the tokens: training then improves
        only the renderer, and every token, with any dynamics model trained on them, stays
        valid."""
        self.change_encoder.requires_grad_(False)
        self.quantizer.requires_grad_(False)

    # -- tokens -------------------------------------------------------------------------------

    def encode(self, frames_BTCHW: Tensor) -> Tensor:
        """frames float (B, T, C, H, W) in [-1, 1] -> tokens int64 (B, T, g, g); frame t's tokens
        read frames t-2..t (frame 0's read frame 0 alone: no change)."""
        self.check_frames(frames_BTCHW)
        latents_BTKQ = self._latents(_triples(frames_BTCHW))
        with torch.autocast(latents_BTKQ.device.type, enabled=False):
            indices_BTK = self.quantizer.tokenize(latents_BTKQ.float())
        return rearrange(indices_BTK, "b t (h w) -> b t h w", h=self.cfg.grid)

    def _latents(self, triples_BT3CHW: Tensor) -> Tensor:
        """(B, T, 3, C, H, W) frames (t-1, t, t+1) -> pre-quantisation latents (B, T, K, q)."""
        b = triples_BT3CHW.shape[0]
        prev, cur, nxt = triples_BT3CHW.unbind(dim=2)
        x = torch.cat([prev, cur, nxt, nxt - cur], dim=2)
        z = self.change_encoder(rearrange(x, "b t c h w -> (b t) c h w"))
        return rearrange(z, "(b t) (k q) -> b t k q", b=b, k=self.cfg.tokens)

    def _embed(self, tokens_BThw: Tensor) -> Tensor:
        """tokens (B, T, g, g) -> FSQ codes (B, T, K, q)."""
        return self.quantizer.embed(rearrange(tokens_BThw.long(), "b t h w -> b t (h w)"))

    # -- rendering ----------------------------------------------------------------------------

    def render(self, previous_BCHW: Tensor, current_BCHW: Tensor, codes_BKQ: Tensor) -> Tensor:
        """Frame t+1 (B, C, H, W), not clamped, from frames t-1, t and the codes of the change."""
        cond_BD = self.cond(rearrange(codes_BKQ, "b k q -> b (k q)"))
        full = self.in_full(torch.cat([previous_BCHW, current_BCHW], dim=1))
        half = self.in_half(full)
        x = self.in_quarter(half)
        for block in self.quarter:
            x = block(x, cond_BD)
        x = self.film_half(self.merge_half(torch.cat([self.up_half(x), half], dim=1)), cond_BD)
        x = self.film_full(self.merge_full(torch.cat([self.up_full(x), full], dim=1)), cond_BD)
        out = self.out(F.silu(x))
        flow_B2HW = torch.tanh(out[:, :2] / self.cfg.max_flow) * self.cfg.max_flow
        return warp(current_BCHW, flow_B2HW, self.cfg.interpolation) + out[:, 2:]

    def start(
        self, frames_BTCHW: Tensor, hop: int | None = None, cached: bool = True
    ) -> tuple[Tensor, Tensor, DeltaState]:
        """Tokens of prompt frames, the frames as the world shows them (the real ones: the
        renderer is given them) and the state `decode_step` renders the next frame from.
        `hop` and `cached` are the grid tokenizer's (its decoder window); unused here."""
        tokens_BThw = self.encode(frames_BTCHW)
        frames_BTCHW = frames_BTCHW.clamp(-1, 1)
        state = DeltaState(frames_BTCHW[:, max(frames_BTCHW.shape[1] - 2, 0)], frames_BTCHW[:, -1])
        return tokens_BThw, frames_BTCHW, state

    def decode_step(
        self, tokens_Bhw: Tensor, state: DeltaState, observed: Tensor | None = None
    ) -> tuple[Tensor, DeltaState]:
        """The frame (B, C, H, W) in [-1, 1] that the next tokens (B, g, g) make of `state`.
        With `observed` (the real frame, in teacher forcing) the state goes on from it instead:
        the renderer's past is pixels, so the real past is the real frame."""
        self.check_tokens(tokens_Bhw[:, None])
        if tokens_Bhw.shape[0] != state.current_BCHW.shape[0]:
            raise ValueError(
                f"tokens for {tokens_Bhw.shape[0]} clips, renderer state for "
                f"{state.current_BCHW.shape[0]}"
            )
        codes_BKQ = self._embed(tokens_Bhw[:, None])[:, 0].to(state.current_BCHW.dtype)
        frame = self.render(state.previous_BCHW, state.current_BCHW, codes_BKQ).clamp(-1, 1)
        if observed is not None:
            frame = observed.to(frame.dtype).clamp(-1, 1)
        return frame, DeltaState(state.current_BCHW, frame)

    def reconstruct(self, frames_BTCHW: Tensor, tokens_BThw: Tensor | None = None) -> Tensor:
        """A real clip rendered from its first frame and its own tokens (`tokens_BThw` when
        already encoded), each frame from the renderer's previous outputs: what a world with a
        perfect dynamics model shows."""
        if tokens_BThw is None:
            tokens_BThw = self.encode(frames_BTCHW)
        first = frames_BTCHW[:, 0].clamp(-1, 1)
        out, state = [first], DeltaState(first, first)
        for t in range(1, frames_BTCHW.shape[1]):
            frame, state = self.decode_step(tokens_BThw[:, t], state)
            out.append(frame)
        return torch.stack(out, dim=1)

    # -- training -----------------------------------------------------------------------------

    def forward(self, frames_BTCHW: Tensor, **options: Any) -> TokenizerOutput:
        """The training loss (`loss`; `options` are its keyword arguments)."""
        return self.loss(frames_BTCHW, **options)

    def loss(
        self,
        frames_BTCHW: Tensor,
        closed_loop: float = 0.0,
        through_time: bool = False,
        change_weight: float = 1.0,
    ) -> TokenizerOutput:
        """MSE of frames 1..T-1 rendered one at a time. A share `closed_loop` of the clips is
        rendered from the renderer's own previous outputs, as the engine renders, the rest from
        the real previous frames; the tokens always come from the real clip. `through_time`
        lets the gradient flow back through those own outputs (backpropagation through time),
        so a render is also trained by the frames drawn from it later: detail lost now costs
        every later frame, which a detached render never learns. Pixels that change between
        real frames t and t+1 weigh `change_weight` times the others in the loss (`mse` in the
        metrics stays plain): a sprite turning covers a few dozen of 4096 pixels, too few for a
        plain MSE to spend tokens on, yet it is what a key does, and a render that misses it
        misses it for the rest of a rollout."""
        self.check_frames(frames_BTCHW)
        b, t = frames_BTCHW.shape[:2]
        if t < 2:
            raise ValueError(f"the loss needs clips of >= 2 frames, got {t}")
        latents = self._latents(_triples(frames_BTCHW)[:, 1:])
        with torch.autocast(latents.device.type, enabled=False):
            quant = self.quantizer(latents.float())
        own_B111 = (torch.rand(b, device=frames_BTCHW.device) < closed_loop).view(b, 1, 1, 1)
        previous, current, renders = frames_BTCHW[:, 0], frames_BTCHW[:, 0], []
        for i in range(t - 1):
            render = self.render(previous, current, quant.quantized[:, i].to(current.dtype))
            renders.append(render)
            own = (render if through_time else render.detach()).clamp(-1, 1).to(current.dtype)
            previous, current = current, torch.where(own_B111, own, frames_BTCHW[:, i + 1])
        recon = torch.stack(renders, dim=1).float()
        target = frames_BTCHW[:, 1:]
        mse = F.mse_loss(recon, target)
        loss = mse
        if change_weight != 1.0:
            changed = (target - frames_BTCHW[:, :-1]).abs().amax(dim=2, keepdim=True)
            weight = 1 + (change_weight - 1) * (changed > CHANGED_PIXEL).float()
            loss = (weight * (recon - target).pow(2)).mean() / weight.mean()
        usage, perplexity = code_statistics(quant.indices, self.num_codes)
        copy_mse = F.mse_loss(frames_BTCHW[:, :-1], target)  # copying the last real frame
        first_mse = F.mse_loss(frames_BTCHW[:, :1].expand_as(target), target)  # the first
        metrics = {
            "mse": mse.detach(),
            # Mean of per-frame PSNRs, which still frames dominate; the pooled one (from the
            # MSE over all frames) is where motion shows.
            "psnr": frame_psnr(recon.detach(), target),
            "pooled_psnr": 10 * torch.log10(4 / mse.detach().clamp_min(1e-10)),
            "copy_pooled_psnr": 10 * torch.log10(4 / copy_mse.clamp_min(1e-10)),
            # What closed-loop renders (rollouts from frame 0) have to beat.
            "copy_first_pooled_psnr": 10 * torch.log10(4 / first_mse.clamp_min(1e-10)),
            "usage": usage,
            "perplexity": perplexity,
        }
        full = torch.cat([frames_BTCHW[:, :1], recon.detach()], dim=1)
        return TokenizerOutput(loss=loss, metrics=metrics, recon=full)

    # -- checks -------------------------------------------------------------------------------

    def check_frames(self, frames: Tensor) -> None:
        cfg = self.cfg
        check_frames(
            frames, channels=cfg.channels, image_size=cfg.image_size,
            length=(1, 10**9), model="this delta tokenizer",
        )  # fmt: skip

    def check_tokens(self, tokens: Tensor) -> None:
        """ValueError naming what is wrong with a tokens batch (B, T, g, g)."""
        check_token_grid(tokens, self.cfg.grid, self.num_codes)


def _triples(frames_BTCHW: Tensor) -> Tensor:
    """(B, T, 3, C, H, W): frames (t-2, t-1, t) for every t, frame 0 standing in before it."""
    first = frames_BTCHW[:, :1]
    padded = torch.cat([first, first, frames_BTCHW], dim=1)
    t = frames_BTCHW.shape[1]
    return torch.stack([padded[:, :t], padded[:, 1 : t + 1], padded[:, 2:]], dim=2)
