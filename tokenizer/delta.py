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

A driving world's renderer can also be told the controls (`action_dim` > 0): the change encoder
and the renderer read the continuous action that leads to each frame, so the view turns and moves
the way the wheel and pedals say, from the pixels it turns, and the tokens carry what the
controls leave open (the road ahead that comes into view). Every method then takes the actions
beside the frames or tokens.

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
        # The controls join the change encoder's output, so its tokens spend no bits on what the
        # renderer is told anyway (a conditional VAE's encoder reads the condition too).
        self.action_in = nn.Linear(cfg.action_dim, cfg.tokens * q) if cfg.action_dim else None
        self.quantizer = FSQ(cfg.levels)
        self.cond = nn.Sequential(
            nn.Linear(cfg.tokens * q + cfg.action_dim, cfg.cond_width), nn.SiLU(),
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
        # The flow (x, y) comes out beside the residual, or, when it must not read the tokens,
        # from a head on the 1/4-resolution features, modulated by the controls alone.
        self.motion, self.flow_head = None, None
        if not cfg.flow_from_tokens:
            self.motion = nn.Sequential(
                nn.Linear(cfg.action_dim, cfg.cond_width), nn.SiLU(),
                nn.Linear(cfg.cond_width, cfg.cond_width),
            )  # fmt: skip
            self.flow_head = nn.Conv2d(4 * w, 2, 3, padding=1)
        self.out = nn.Conv2d(w, 2 * cfg.flow_from_tokens + cfg.channels, 3, padding=1)
        for head in (self.out, self.flow_head):  # untrained: copy the last frame
            for param in [] if head is None else head.parameters():
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
        if self.action_in is not None:  # the controls the encoder reads
            self.action_in.requires_grad_(False)

    # -- tokens -------------------------------------------------------------------------------

    def encode(self, frames_BTCHW: Tensor, actions: Tensor | None = None) -> Tensor:
        """frames float (B, T, C, H, W) in [-1, 1] -> tokens int64 (B, T, g, g); frame t's tokens
        read frames t-2..t (frame 0's read frame 0 alone: no change) and, when the tokenizer
        reads controls, `actions` float (B, T - 1 or T, D): actions[t] leads from frame t to
        t + 1 (a last one is unused)."""
        self.check_frames(frames_BTCHW)
        into_BTD = self._actions_into(actions, frames_BTCHW)
        latents_BTKQ = self._latents(_triples(frames_BTCHW), into_BTD)
        with torch.autocast(latents_BTKQ.device.type, enabled=False):
            indices_BTK = self.quantizer.tokenize(latents_BTKQ.float())
        return rearrange(indices_BTK, "b t (h w) -> b t h w", h=self.cfg.grid)

    def _latents(self, triples_BT3CHW: Tensor, into_BTD: Tensor | None) -> Tensor:
        """(B, T, 3, C, H, W) frames (t-1, t, t+1) and the controls leading to frame t+1
        (B, T, D) when read -> pre-quantisation latents (B, T, K, q)."""
        b = triples_BT3CHW.shape[0]
        prev, cur, nxt = triples_BT3CHW.unbind(dim=2)
        x = torch.cat([prev, cur, nxt, nxt - cur], dim=2)
        z = self.change_encoder(rearrange(x, "b t c h w -> (b t) c h w"))
        if self.action_in is not None and into_BTD is not None:
            z = z + self.action_in(rearrange(into_BTD, "b t d -> (b t) d").to(z.dtype))
        return rearrange(z, "(b t) (k q) -> b t k q", b=b, k=self.cfg.tokens)

    def _actions_into(self, actions: Tensor | None, frames_BTCHW: Tensor) -> Tensor | None:
        """The controls leading into each frame (B, T, D), zeros into frame 0, from `actions`
        (B, T - 1 or T, D) as the data aligns them; None for a renderer told no controls."""
        b, t = frames_BTCHW.shape[:2]
        if not self.cfg.action_dim:
            return None
        lengths = (max(t - 1, 0), t)
        actions_BTD = self._check_actions(actions, b, lengths)[:, : t - 1]
        zeros_B1D = actions_BTD.new_zeros(b, 1, self.cfg.action_dim)
        return torch.cat([zeros_B1D, actions_BTD], dim=1).to(frames_BTCHW.dtype)

    def _check_actions(self, actions: Tensor | None, b: int, lengths: tuple[int, ...]) -> Tensor:
        """`actions` float (B, A, D) with A in `lengths`, or a ValueError naming the problem."""
        d = self.cfg.action_dim
        if actions is None:
            raise ValueError(
                f"this delta tokenizer is told {d} controls a frame (action_dim); pass the "
                f"actions (B, T, {d}) beside the frames"
            )
        ok = actions.ndim == 3 and actions.shape[0] == b and actions.shape[2] == d
        if not (ok and actions.is_floating_point() and actions.shape[1] in lengths):
            raise ValueError(
                f"expected float controls (B={b}, T in {sorted(set(lengths))}, D={d}), got "
                f"{actions.dtype} {tuple(actions.shape)}"
            )
        return actions

    def _embed(self, tokens_BThw: Tensor) -> Tensor:
        """tokens (B, T, g, g) -> FSQ codes (B, T, K, q)."""
        return self.quantizer.embed(rearrange(tokens_BThw.long(), "b t h w -> b t (h w)"))

    # -- rendering ----------------------------------------------------------------------------

    def render(
        self,
        previous_BCHW: Tensor,
        current_BCHW: Tensor,
        codes_BKQ: Tensor,
        action_BD: Tensor | None = None,
    ) -> Tensor:
        """Frame t+1 (B, C, H, W), not clamped, from frames t-1, t, the codes of the change and,
        when the renderer is told controls, the action (B, D) leading from frame t to t+1."""
        cond_BD = rearrange(codes_BKQ, "b k q -> b (k q)")
        if self.cfg.action_dim:
            given = None if action_BD is None else action_BD[:, None]
            action_BD = self._check_actions(given, cond_BD.shape[0], (1,))[:, 0]
            cond_BD = torch.cat([cond_BD, action_BD.to(cond_BD.dtype)], dim=1)
        motion_BD = cond_BD = self.cond(cond_BD)
        if self.motion is not None:  # validated: a flow kept from the tokens has controls
            assert action_BD is not None
            motion_BD = self.motion(action_BD.to(cond_BD.dtype))
        full = self.in_full(torch.cat([previous_BCHW, current_BCHW], dim=1))
        half = self.in_half(full)
        x = self.in_quarter(half)
        for block in self.quarter:
            x = block(x, motion_BD)
        flow_B2HW = None
        if self.flow_head is not None:  # smooth at 1/4 resolution: a turn, a slide
            flow_B2HW = F.interpolate(self.flow_head(F.silu(x)), scale_factor=4, mode="bilinear")
        x = self.film_half(self.merge_half(torch.cat([self.up_half(x), half], dim=1)), cond_BD)
        x = self.film_full(self.merge_full(torch.cat([self.up_full(x), full], dim=1)), cond_BD)
        residual = self.out(F.silu(x))
        if flow_B2HW is None:
            flow_B2HW, residual = residual[:, :2], residual[:, 2:]
        flow_B2HW = torch.tanh(flow_B2HW / self.cfg.max_flow) * self.cfg.max_flow
        return warp(current_BCHW, flow_B2HW, self.cfg.interpolation) + residual

    def start(
        self,
        frames_BTCHW: Tensor,
        hop: int | None = None,
        cached: bool = True,
        actions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, DeltaState]:
        """Tokens of prompt frames, the frames as the world shows them (the real ones: the
        renderer is given them) and the state `decode_step` renders the next frame from.
        `hop` and `cached` are the grid tokenizer's (its decoder window); unused here.
        `actions` (B, T - 1, D): the controls between the prompt frames, as `encode` reads."""
        tokens_BThw = self.encode(frames_BTCHW, actions)
        frames_BTCHW = frames_BTCHW.clamp(-1, 1)
        state = DeltaState(frames_BTCHW[:, max(frames_BTCHW.shape[1] - 2, 0)], frames_BTCHW[:, -1])
        return tokens_BThw, frames_BTCHW, state

    def decode_step(
        self,
        tokens_Bhw: Tensor,
        state: DeltaState,
        observed: Tensor | None = None,
        action: Tensor | None = None,
    ) -> tuple[Tensor, DeltaState]:
        """The frame (B, C, H, W) in [-1, 1] that the next tokens (B, g, g) make of `state`,
        told the `action` (B, D) that leads to it when the renderer reads controls.
        With `observed` (the real frame, in teacher forcing) the state goes on from it instead:
        the renderer's past is pixels, so the real past is the real frame."""
        self.check_tokens(tokens_Bhw[:, None])
        if tokens_Bhw.shape[0] != state.current_BCHW.shape[0]:
            raise ValueError(
                f"tokens for {tokens_Bhw.shape[0]} clips, renderer state for "
                f"{state.current_BCHW.shape[0]}"
            )
        codes_BKQ = self._embed(tokens_Bhw[:, None])[:, 0].to(state.current_BCHW.dtype)
        frame = self.render(state.previous_BCHW, state.current_BCHW, codes_BKQ, action)
        frame = frame.clamp(-1, 1)
        if observed is not None:
            frame = observed.to(frame.dtype).clamp(-1, 1)
        return frame, DeltaState(state.current_BCHW, frame)

    def reconstruct(
        self,
        frames_BTCHW: Tensor,
        tokens_BThw: Tensor | None = None,
        actions: Tensor | None = None,
    ) -> Tensor:
        """A real clip rendered from its first frame and its own tokens (`tokens_BThw` when
        already encoded) and controls (`actions`, as `encode` reads them), each frame from the
        renderer's previous outputs: what a world with a perfect dynamics model shows."""
        if tokens_BThw is None:
            tokens_BThw = self.encode(frames_BTCHW, actions)
        into_BTD = self._actions_into(actions, frames_BTCHW)
        first = frames_BTCHW[:, 0].clamp(-1, 1)
        out, state = [first], DeltaState(first, first)
        for t in range(1, frames_BTCHW.shape[1]):
            action = None if into_BTD is None else into_BTD[:, t]
            frame, state = self.decode_step(tokens_BThw[:, t], state, action=action)
            out.append(frame)
        return torch.stack(out, dim=1)

    # -- training -----------------------------------------------------------------------------

    def forward(
        self, frames_BTCHW: Tensor, actions: Tensor | None = None, **options: Any
    ) -> TokenizerOutput:
        """The training loss (`loss`; `options` are its keyword arguments)."""
        return self.loss(frames_BTCHW, actions, **options)

    def loss(
        self,
        frames_BTCHW: Tensor,
        actions: Tensor | None = None,
        closed_loop: float = 0.0,
        through_time: bool = False,
        change_weight: float = 1.0,
    ) -> TokenizerOutput:
        """MSE of frames 1..T-1 rendered one at a time, told `actions` (B, T, D) when the
        renderer reads controls. A share `closed_loop` of the clips is
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
        into_BTD = self._actions_into(actions, frames_BTCHW)
        into_BTD = None if into_BTD is None else into_BTD[:, 1:]
        latents = self._latents(_triples(frames_BTCHW)[:, 1:], into_BTD)
        with torch.autocast(latents.device.type, enabled=False):
            quant = self.quantizer(latents.float())
        own_B111 = (torch.rand(b, device=frames_BTCHW.device) < closed_loop).view(b, 1, 1, 1)
        previous, current, renders = frames_BTCHW[:, 0], frames_BTCHW[:, 0], []
        for i in range(t - 1):
            action = None if into_BTD is None else into_BTD[:, i]
            render = self.render(previous, current, quant.quantized[:, i].to(current.dtype), action)
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
