"""The causal video tokenizer: frames (B, T, C, H, W) in [-1, 1] <-> tokens (B, T, h, w).

Genie's ST-ViViT layout: a per-frame stem maps each frame to an h x w token grid, ST blocks
(spatial attention, causal temporal attention, MLP) mix the grid, a quantizer discretises each
token, and a decoder of the same kind with a per-frame head maps codes back to pixels. Every piece
is per-frame or causal in time, so tokens and reconstructions of frame t depend on frames <= t.
`decode_start` / `decode_step` decode a stream one frame at a time from the decoder's temporal
KV cache, in a window that jumps like the dynamics model's (worldsim.nn.kv_cache.window_start).

On CPU the default stem is convolutional (stride-2 convs to the grid, pixel-shuffle head), which
carries pixels far more cheaply than patch attention (in 7 CPU-minutes on CoinRun, 27.2 dB held-out
against 21.7 dB for a per-frame ViT); "patch" is Genie's linear patch embedding. Training is pure
MSE plus the quantizer's terms, for PSNR.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (ST-ViViT tokenizer);
Hansen-Estruch et al. 2025, "Learnings from Scaling Visual Tokenizers" (ViTok: decoder capacity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tokenizer.config import TokenizerConfig
from tokenizer.quantizers import build_quantizer, code_statistics
from worldsim.nn.frames import STEMS, st_transformer
from worldsim.nn.kv_cache import KVCache, activation_dtype, check_hop, frames_to_drop
from worldsim.nn.pretrained import PretrainedModel

RANGE_TOLERANCE = 1e-3  # frames may overshoot [-1, 1] by float rounding of uint8 / 127.5 - 1


@dataclass
class TokenizerOutput:
    loss: Tensor  # scalar: MSE + quantizer terms
    metrics: dict[str, Tensor]  # detached scalars: mse, psnr, quantizer_loss, usage, perplexity
    recon: Tensor  # (B, T, C, H, W) reconstruction, detached, not clamped


@dataclass(frozen=True, eq=False)  # holds tensors
class DecodeState:
    """The causal decoder's window for one-frame-at-a-time decoding (`decode_start`,
    `decode_step`): the tokens of its frames and, when cached, their temporal keys/values."""

    tokens_BThw: Tensor  # the window's frames, oldest first (at most max_frames)
    cache: KVCache | None  # None: every step decodes the whole window again (the reference)
    hop: int  # frames the window jumps by when full (worldsim.nn.kv_cache.window_start)


def frame_psnr(pred_BTCHW: Tensor, target_BTCHW: Tensor) -> Tensor:
    """Mean over frames of the PSNR (dB) of each frame, images in [-1, 1] (peak-to-peak 2)."""
    err = (pred_BTCHW.float().clamp(-1, 1) - target_BTCHW.float()).pow(2).mean(dim=(2, 3, 4))
    return (10 * torch.log10(4 / err.clamp_min(1e-10))).mean()


def check_frames(
    frames: Tensor,
    *,
    channels: int,
    image_size: int,
    length: tuple[int, int],
    model: str,
    size_note: str = "",
) -> None:
    """ValueError naming what is wrong with a (B, T, C, H, W) batch in [-1, 1] that `model`
    (e.g. "this tokenizer") reads; T must lie in the inclusive range `length`."""
    if not isinstance(frames, Tensor) or not frames.is_floating_point():
        raise ValueError(f"frames must be a float tensor, got {getattr(frames, 'dtype', frames)}")
    if frames.ndim != 5:
        raise ValueError(f"frames must be (B, T, C, H, W), got shape {tuple(frames.shape)}")
    _, t, c, h, w = frames.shape
    if c != channels:
        raise ValueError(f"frames have {c} channels; {model} takes {channels}")
    if (h, w) != (image_size, image_size):
        raise ValueError(f"frames are {h}x{w}; {model} takes {image_size}x{image_size}{size_note}")
    if not length[0] <= t <= length[1]:
        raise ValueError(f"clips must have {length[0]}..{length[1]} frames here, got {t}")
    if not torch.isfinite(frames).all():
        raise ValueError("frames contain NaN or inf values")
    lo, hi = float(frames.min()), float(frames.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"frame values must lie in [-1, 1], got min {lo:.3g} max {hi:.3g} "
            "(uint8 pixels map to x / 127.5 - 1)"
        )


def check_token_grid(tokens: Tensor, grid: int, num_codes: int) -> None:
    """ValueError naming what is wrong with integer tokens (B, T, grid, grid) in [0, num_codes)."""
    if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(
            f"tokens must be an integer tensor, got {getattr(tokens, 'dtype', tokens)}"
        )
    if tokens.ndim != 4 or tuple(tokens.shape[2:]) != (grid, grid):
        raise ValueError(f"tokens must be (B, T, {grid}, {grid}), got shape {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= num_codes):
        raise ValueError(
            f"token ids must lie in [0, {num_codes}), got "
            f"min {int(tokens.min())} max {int(tokens.max())}"
        )


class VideoTokenizer(PretrainedModel):
    """Causal VQ video tokenizer. `forward(frames)` is the training loss (so DDP wrappers work);
    `encode` / `decode` are the inference API."""

    def __init__(self, cfg: TokenizerConfig | Mapping[str, Any]) -> None:
        super().__init__()
        cfg = cfg if isinstance(cfg, TokenizerConfig) else TokenizerConfig.from_dict(dict(cfg))
        cfg.validate()
        # What @register_to_config would do, after turning the dataclass into JSON-able data:
        # config.json then holds {"cfg": {...}} and from_pretrained calls cls(cfg=dict).
        self.register_to_config(cfg=asdict(cfg))
        self.cfg = cfg
        stem, head = STEMS[cfg.stem]
        n, d = cfg.grid**2, cfg.width
        self.stem = stem(cfg, cfg.encoder_conv_width)
        self.enc_pos_space = nn.Parameter(torch.zeros(1, 1, n, d))
        # No temporal position table in the encoder: the causal mask already orders the frames,
        # and with one the same static patch got a different code in every frame (0.8% of
        # CoinRun tokens equal their predecessor, 41% without it, for 0.13 dB less PSNR), which
        # leaves the dynamics model no copyable context. The decoder keeps its table.
        self.encoder = st_transformer(cfg, cfg.encoder_depth)
        self.quantizer = build_quantizer(cfg.quantizer)
        self.pre_quant = nn.Linear(d, self.quantizer.dim)
        self.post_quant = nn.Linear(self.quantizer.dim, d)
        self.dec_pos_space = nn.Parameter(torch.zeros(1, 1, n, d))
        self.dec_pos_time = nn.Parameter(torch.zeros(1, cfg.max_frames, 1, d))
        self.decoder = st_transformer(cfg, cfg.decoder_depth)
        self.head = head(cfg, cfg.decoder_conv_width)
        for pos in (self.enc_pos_space, self.dec_pos_space, self.dec_pos_time):
            nn.init.trunc_normal_(pos, std=0.02)
        self.tokens_frozen = False  # freeze_tokens(): train the decoder only

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def freeze_tokens(self) -> None:
        """Stop training everything that decides the tokens (stem, encoder, quantizer): training
        then improves only the decoder, and every token, with any dynamics model trained on
        them, stays valid."""
        for part in (self.stem, self.encoder, self.pre_quant, self.quantizer):
            part.requires_grad_(False)
        self.enc_pos_space.requires_grad_(False)
        self.tokens_frozen = True

    def encode(self, frames_BTCHW: Tensor, actions: Tensor | None = None) -> Tensor:
        """frames float (B, T, C, H, W) in [-1, 1] -> tokens int64 (B, T, h, w). `actions`: the
        delta tokenizer's (a renderer told controls); a grid describes each frame alone."""
        self.check_frames(frames_BTCHW)
        return rearrange(self._tokenize(frames_BTCHW), "b t (h w) -> b t h w", h=self.cfg.grid)

    def decode(self, tokens_BThw: Tensor) -> Tensor:
        """tokens int (B, T, h, w) -> frames float (B, T, C, H, W) clamped to [-1, 1]."""
        self.check_tokens(tokens_BThw)
        return self._pixels(self._codes(tokens_BThw)).clamp(-1, 1)

    def forward(self, frames_BTCHW: Tensor, token_noise: float = 0.0) -> TokenizerOutput:
        return self.loss(frames_BTCHW, token_noise)

    def loss(self, frames_BTCHW: Tensor, token_noise: float = 0.0) -> TokenizerOutput:
        """MSE + quantizer terms. `token_noise` (decoder-only training, after `freeze_tokens`):
        each clip gets a share drawn from U(0, token_noise) of its tokens replaced by random
        codes, so the decoder learns to render a frame whose tokens are partly wrong, as a
        dynamics model's sampled tokens are, from their neighbours and the earlier frames."""
        self.check_frames(frames_BTCHW)
        if token_noise and not self.tokens_frozen:
            raise ValueError("token_noise trains the decoder alone: call freeze_tokens() first")
        if self.tokens_frozen:  # no gradient reaches the encoder: tokenize without a graph
            with torch.no_grad():
                indices = self._tokenize(frames_BTCHW)
                if token_noise > 0:
                    indices = _replace_tokens(indices, token_noise, self.num_codes)
            codes, quant_loss = self.quantizer.embed(indices), frames_BTCHW.new_zeros(())
        else:
            z = self._latents(frames_BTCHW)
            # Rounding and code lookup in bf16 would move latents across code boundaries.
            with torch.autocast(z.device.type, enabled=False):
                quant = self.quantizer(z.float())
            indices, codes, quant_loss = quant.indices, quant.quantized, quant.loss
        recon = self._pixels(codes).float()
        mse = F.mse_loss(recon, frames_BTCHW)
        usage, perplexity = code_statistics(indices, self.num_codes)
        metrics = {
            "mse": mse.detach(),
            "psnr": frame_psnr(recon.detach(), frames_BTCHW),
            "quantizer_loss": quant_loss.detach(),
            "usage": usage,
            "perplexity": perplexity,
        }
        return TokenizerOutput(loss=mse + quant_loss, metrics=metrics, recon=recon.detach())

    def _tokenize(self, frames_BTCHW: Tensor) -> Tensor:
        """(B, T, C, H, W) -> code indices (B, T, h*w), without training side effects."""
        z = self._latents(frames_BTCHW)
        # Rounding and code lookup in bf16 would move latents across code boundaries.
        with torch.autocast(z.device.type, enabled=False):
            return self.quantizer.tokenize(z.float())

    def _latents(self, frames_BTCHW: Tensor) -> Tensor:
        """(B, T, C, H, W) -> pre-quantisation latents (B, T, h*w, quantizer dim)."""
        x = self.stem(frames_BTCHW) + self.enc_pos_space
        return self.pre_quant(self.encoder(x))

    def decode_start(
        self, tokens_BThw: Tensor, hop: int | None = None, cached: bool = True
    ) -> tuple[Tensor, DecodeState]:
        """`decode(tokens_BThw)` plus the state from which `decode_step` decodes later frames one
        at a time. `hop` (default max_frames // 2): frames the window jumps by when a new frame
        would not fit the learned positions; `cached=False` keeps no keys/values (reference)."""
        self.check_tokens(tokens_BThw)
        hop = self.cfg.max_frames // 2 if hop is None else hop
        check_hop(hop, self.cfg.max_frames)
        if not cached:
            return self.decode(tokens_BThw), DecodeState(tokens_BThw, None, hop)
        hidden_BTND, cache = self._decode_prefill(tokens_BThw)
        frames = self.head(hidden_BTND).clamp(-1, 1)
        return frames, DecodeState(tokens_BThw, cache, hop)

    def start(
        self,
        frames_BTCHW: Tensor,
        hop: int | None = None,
        cached: bool = True,
        actions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, DecodeState]:
        """Tokens of prompt frames, their decoding (what a world shows of them) and the state
        `decode_step` decodes later frames from (`decode_start`'s). `actions`: unused (`encode`)."""
        tokens_BThw = self.encode(frames_BTCHW)
        return (tokens_BThw, *self.decode_start(tokens_BThw, hop, cached))

    def reconstruct(
        self,
        frames_BTCHW: Tensor,
        tokens_BThw: Tensor | None = None,
        actions: Tensor | None = None,
    ) -> Tensor:
        """A clip decoded from its own tokens (`tokens_BThw` when already encoded): what a world
        with a perfect dynamics shows. `actions`: unused (`encode`)."""
        return self.decode(self.encode(frames_BTCHW) if tokens_BThw is None else tokens_BThw)

    def decode_step(
        self,
        tokens_Bhw: Tensor,
        state: DecodeState,
        observed: Tensor | None = None,
        action: Tensor | None = None,
    ) -> tuple[Tensor, DecodeState]:
        """The frame (B, C, H, W) of the next tokens (B, h, w), decoded in the window of
        `state`: equal to `decode(window)[:, -1]`, at the cost of one frame when cached.
        `observed` (the real frame, in teacher forcing) is not needed: the window is tokens;
        nor is `action` (the delta tokenizer's, for a renderer told controls)."""
        tokens_B1hw = tokens_Bhw[:, None]
        self.check_tokens(tokens_B1hw)
        window_BThw = state.tokens_BThw
        if tokens_B1hw.shape[0] != window_BThw.shape[0]:
            raise ValueError(
                f"tokens for {tokens_B1hw.shape[0]} clips, decoder state for {window_BThw.shape[0]}"
            )
        cache = state.cache
        drop = frames_to_drop(window_BThw.shape[1], self.cfg.max_frames, state.hop)
        if drop:  # the window jumps; rebuild the cache once
            window_BThw = window_BThw[:, drop:]
            cache = None if cache is None else self._decode_prefill(window_BThw)[1]
        window_BThw = torch.cat([window_BThw, tokens_B1hw.to(window_BThw.dtype)], dim=1)
        if cache is None:
            frame = self.decode(window_BThw)[:, -1]
        else:
            x_B1ND = self._decoder_inputs(self._codes(tokens_B1hw), start=cache.length)
            hidden_B1ND, cache = self.decoder.forward_cached(x_B1ND, cache, commit=True)
            frame = self.head(hidden_B1ND)[:, 0].clamp(-1, 1)
        return frame, DecodeState(window_BThw, cache, state.hop)

    def _decode_prefill(self, tokens_BThw: Tensor) -> tuple[Tensor, KVCache]:
        """Decoder outputs (B, T, N, D) of a window from position 0 and its filled cache."""
        x_BTND = self._decoder_inputs(self._codes(tokens_BThw), start=0)
        b, _, n, _ = x_BTND.shape
        dtype = activation_dtype(x_BTND.device, self.post_quant.weight.dtype)
        cache = self.decoder.empty_cache(b * n, self.cfg.max_frames, dtype, x_BTND.device)
        return self.decoder.forward_cached(x_BTND, cache, commit=True)

    def _codes(self, tokens_BThw: Tensor) -> Tensor:
        return self.quantizer.embed(rearrange(tokens_BThw.long(), "b t h w -> b t (h w)"))

    def _decoder_inputs(self, codes_BTNQ: Tensor, start: int) -> Tensor:
        """Codes of frames start.. of a window -> decoder inputs (B, T, h*w, width)."""
        x = self.post_quant(codes_BTNQ)
        return x + self.dec_pos_space + self.dec_pos_time[:, start : start + x.shape[1]]

    def _pixels(self, codes_BTNQ: Tensor) -> Tensor:
        """Codes (B, T, h*w, quantizer dim) -> frames (B, T, C, H, W), not clamped."""
        return self.head(self.decoder(self._decoder_inputs(codes_BTNQ, start=0)))

    def check_frames(self, frames: Tensor) -> None:
        """ValueError naming what is wrong with a frames batch."""
        cfg = self.cfg
        check_frames(
            frames, channels=cfg.channels, image_size=cfg.image_size, length=(1, cfg.max_frames),
            model="this tokenizer", size_note=f" (patch size {cfg.patch_size})",
        )  # fmt: skip

    def check_tokens(self, tokens: Tensor) -> None:
        """ValueError naming what is wrong with a tokens batch."""
        check_token_grid(tokens, self.cfg.grid, self.num_codes)
        self._check_length(tokens.shape[1])

    def _check_length(self, t: int) -> None:
        if not 1 <= t <= self.cfg.max_frames:
            raise ValueError(
                f"clips must have 1..{self.cfg.max_frames} frames (max_frames), got {t}"
            )


def _replace_tokens(indices_BTN: Tensor, max_share: float, num_codes: int) -> Tensor:
    """Each clip's tokens, a share drawn from U(0, max_share) of them replaced by random codes."""
    share_B11 = torch.rand(indices_BTN.shape[0], 1, 1, device=indices_BTN.device) * max_share
    replace = torch.rand(indices_BTN.shape, device=indices_BTN.device) < share_B11
    random = torch.randint_like(indices_BTN, num_codes)
    return torch.where(replace, random, indices_BTN)
