"""The latent action model (LAM): which of a few discrete actions explains each frame change.

Genie's pixel-input LAM. The encoder maps every frame to a token grid (per-frame stem) and mixes
the grids with a causal ST transformer; the action a_t is read from the change of the encoder
outputs between frames t and t+1 (an MLP per patch, averaged over patches) and vector-quantised to
one of |A| codes. The decoder predicts frame t+1 from the past frames it is allowed to see
(`LAMConfig.decoder_context`) plus the embedding of a_t added to frame t's tokens, so frame t+1
reaches the decoder only through the action's few bits: to predict well, the action must carry
what changed. Training is MSE on the predicted frames plus the quantizer's terms.

Conventions: a_t is the action after frame t, leading to frame t+1, as for true actions
(docs/architecture.md); actions of a T-frame clip are (B, T-1).

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (latent action
model); Ye et al. 2024, "Latent Action Pretraining from Videos" (LAPA: quantised frame
differences); Gao et al. 2025, "AdaWorld" (a decoder that sees only the last frame).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from simulator.models.lam_config import LAMConfig
from tokenizer.model import check_frames, frame_psnr
from tokenizer.quantizers import build_quantizer, code_statistics
from worldsim.nn.frames import STEMS, st_transformer
from worldsim.nn.pretrained import PretrainedModel

# decoder_context -> einops patterns into and out of the decoder's (B', T', N, D) layout.
# "all_frames" (Genie): causal attention over frames 0..t. "last_frame": every frame t is its own
# length-1 clip, so the prediction of frame t+1 sees frame t and a_t only.
DECODER_CONTEXTS: dict[str, tuple[str, str]] = {
    "all_frames": ("b t n d -> b t n d", "b t n d -> b t n d"),
    "last_frame": ("b t n d -> (b t) 1 n d", "(b t) 1 n d -> b t n d"),
}


@dataclass
class LAMOutput:
    loss: Tensor  # scalar: MSE of the predicted frames + quantizer terms
    # Detached scalars: mse, copy_mse, psnr, copy_psnr (the copy-the-last-frame baseline),
    # quantizer_loss, usage, perplexity, active_actions and action_share_<i> for every action i.
    metrics: dict[str, Tensor]
    recon: Tensor  # (B, T-1, C, H, W) predictions of frames 1..T-1, detached, not clamped


class LatentActionModel(PretrainedModel):
    """Pixel-input latent action model. `forward(frames)` is the training loss (so DDP wrappers
    work); `encode` / `decode` are the inference API."""

    def __init__(self, cfg: LAMConfig | Mapping[str, Any]) -> None:
        super().__init__()
        cfg = cfg if isinstance(cfg, LAMConfig) else LAMConfig.from_dict(dict(cfg))
        cfg.validate()
        if cfg.decoder_context not in DECODER_CONTEXTS:
            raise ValueError(
                f"unknown decoder_context {cfg.decoder_context!r}; choose one of "
                f"{sorted(DECODER_CONTEXTS)}"
            )
        # config.json holds {"cfg": {...}} and from_pretrained calls cls(cfg=dict), as for the
        # tokenizer.
        self.register_to_config(cfg=asdict(cfg))
        self.cfg = cfg
        stem, head = STEMS[cfg.stem]
        n, d = cfg.grid**2, cfg.width
        self.enc_stem = stem(cfg, cfg.encoder_conv_width)
        # No temporal position table in the encoder: the causal mask already orders the frames,
        # and with one, h_{t+1} - h_t depended on t, so on a toy task early codes sorted
        # transitions by time index instead of by what moved.
        self.enc_pos_space = nn.Parameter(torch.zeros(1, 1, n, d))
        self.encoder = st_transformer(cfg, cfg.encoder_depth)
        # Reads the change of each patch, h_{t+1} - h_t, before pooling (LAPA quantises frame
        # differences too). Reading the pair [h_t, h_{t+1}] instead collapsed to one action on a
        # toy moving-square task: what both frames share dominates such features, so every
        # transition's latent pointed the same way; the difference read-out learned actions
        # worth 3-5 dB PSNR over random ones in 800 steps on the same task.
        self.change_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.quantizer = build_quantizer(cfg.quantizer)
        self.pre_quant = nn.Linear(d, self.quantizer.dim)
        self.action_embed = nn.Linear(self.quantizer.dim, d)
        self.dec_stem = stem(cfg, cfg.decoder_conv_width)
        self.dec_pos_space = nn.Parameter(torch.zeros(1, 1, n, d))
        self.dec_pos_time = nn.Parameter(torch.zeros(1, cfg.max_frames - 1, 1, d))
        self.decoder = st_transformer(cfg, cfg.decoder_depth)
        self.head = head(cfg, cfg.decoder_conv_width)
        for pos in (self.enc_pos_space, self.dec_pos_space, self.dec_pos_time):
            nn.init.trunc_normal_(pos, std=0.02)

    @property
    def num_actions(self) -> int:
        return self.quantizer.num_codes

    def encode(self, frames_BTCHW: Tensor) -> Tensor:
        """frames float (B, T, C, H, W) in [-1, 1], T >= 2 -> actions int64 (B, T-1); action t
        explains the change from frame t to frame t+1."""
        self.check_frames(frames_BTCHW, min_frames=2, max_frames=self.cfg.max_frames)
        z = self._action_latents(frames_BTCHW)
        with torch.autocast(z.device.type, enabled=False):
            return self.quantizer.tokenize(z.float())

    def infer_actions(self, frames_BTCHW: Tensor) -> Tensor:
        """Alias of `encode`: the latent actions of a clip, (B, T-1) int64."""
        return self.encode(frames_BTCHW)

    def decode(self, past_BTCHW: Tensor, actions_BT: Tensor) -> Tensor:
        """Frames 0..T'-1 (B, T', C, H, W) and the actions after each (B, T') -> predictions of
        frames 1..T' (B, T', C, H, W), clamped to [-1, 1]. Prediction t sees action t and the
        frames <= t that `decoder_context` allows, never a later frame."""
        self.check_frames(past_BTCHW, min_frames=1, max_frames=self.cfg.max_frames - 1)
        self.check_actions(actions_BT, past_BTCHW.shape[:2])
        codes = self.quantizer.embed(actions_BT.long())
        return self._predict(past_BTCHW, codes).clamp(-1, 1)

    def forward(self, frames_BTCHW: Tensor) -> LAMOutput:
        return self.loss(frames_BTCHW)

    def loss(self, frames_BTCHW: Tensor) -> LAMOutput:
        self.check_frames(frames_BTCHW, min_frames=2, max_frames=self.cfg.max_frames)
        z = self._action_latents(frames_BTCHW)
        # Code lookup in bf16 would move latents across code boundaries.
        with torch.autocast(z.device.type, enabled=False):
            quant = self.quantizer(z.float())
        past, target = frames_BTCHW[:, :-1], frames_BTCHW[:, 1:]
        recon = self._predict(past, quant.quantized).float()
        mse = F.mse_loss(recon, target)
        metrics = {
            "mse": mse.detach(),
            # Copying scores infinite PSNR on unchanged frames (14% of CoinRun's), which lifts
            # its mean PSNR above any predictor's: compare MSE, not mean PSNR, to the baseline.
            "copy_mse": F.mse_loss(past, target).detach(),
            "psnr": frame_psnr(recon.detach(), target),
            "copy_psnr": frame_psnr(past, target),
            "quantizer_loss": quant.loss.detach(),
            **self.action_statistics(quant.indices),
        }
        return LAMOutput(loss=mse + quant.loss, metrics=metrics, recon=recon.detach())

    def action_statistics(self, actions: Tensor) -> dict[str, Tensor]:
        """usage (share of actions used), perplexity, active_actions (count) and the share of
        the batch's transitions that each action explains (action_share_<i>)."""
        usage, perplexity = code_statistics(actions, self.num_actions)
        counts = torch.bincount(actions.flatten(), minlength=self.num_actions).float()
        shares = counts / counts.sum().clamp_min(1.0)
        return {
            "usage": usage,
            "perplexity": perplexity,
            "active_actions": (counts > 0).sum().float(),
            **{f"action_share_{i}": share for i, share in enumerate(shares)},
        }

    def _action_latents(self, frames_BTCHW: Tensor) -> Tensor:
        """(B, T, C, H, W) -> pre-quantisation action latents (B, T-1, quantizer dim)."""
        h = self.encoder(self.enc_stem(frames_BTCHW) + self.enc_pos_space)  # (B, T, N, D), causal
        change = self.change_mlp(h[:, 1:] - h[:, :-1])  # (B, T-1, N, D)
        return self.pre_quant(reduce(change, "b t n d -> b t d", "mean"))

    def _predict(self, past_BTCHW: Tensor, codes_BTQ: Tensor) -> Tensor:
        """Frames 0..T'-1 and action codes (B, T', quantizer dim) -> predictions of frames
        1..T' (B, T', C, H, W), not clamped."""
        b = past_BTCHW.shape[0]
        x = self.dec_stem(past_BTCHW) + self.dec_pos_space
        x = x + rearrange(self.action_embed(codes_BTQ), "b t d -> b t 1 d")
        into, out_of = DECODER_CONTEXTS[self.cfg.decoder_context]
        x = rearrange(x, into, b=b)
        x = self.decoder(x + self.dec_pos_time[:, : x.shape[1]])
        pixels = self.head(rearrange(x, out_of, b=b))
        return past_BTCHW + pixels if self.cfg.predict_delta else pixels

    def check_frames(self, frames: Tensor, *, min_frames: int, max_frames: int) -> None:
        """ValueError naming what is wrong with a frames batch."""
        cfg = self.cfg
        check_frames(
            frames, channels=cfg.channels, image_size=cfg.image_size,
            length=(min_frames, max_frames), model="this LAM",
        )  # fmt: skip

    def check_actions(self, actions: Tensor, batch_and_time: tuple[int, ...]) -> None:
        """ValueError naming what is wrong with latent action ids for `batch_and_time` frames."""
        if not isinstance(actions, Tensor) or actions.is_floating_point() or actions.is_complex():
            raise ValueError(
                f"latent actions must be an integer tensor, got "
                f"{getattr(actions, 'dtype', actions)}"
            )
        if tuple(actions.shape) != tuple(batch_and_time):
            raise ValueError(
                f"latent actions must be (B, T') = {tuple(batch_and_time)}, one after each past "
                f"frame; got shape {tuple(actions.shape)}"
            )
        if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= self.num_actions):
            raise ValueError(
                f"latent action ids must lie in [0, {self.num_actions}), got "
                f"min {int(actions.min())} max {int(actions.max())}"
            )
