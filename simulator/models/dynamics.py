"""The MaskGIT dynamics model: predicts the tokens of frame t+1 from frames <= t and action a_t.

Tokens (B, T, h, w) from the video tokenizer are embedded (codes + one mask id), given learned
spatial and temporal positions and the sum of the configured action embeddings, mixed by a
spatiotemporal transformer that is causal in time, and mapped to logits over the codebook.
Action a_t is taken after frame t, so it is added to every token of frame t+1: the masked tokens
of t+1 must see a_t within their own frame (Jafar #14, Jasmine #122); frame 0 gets a learned
"no action" embedding instead. Training masks a random share of tokens of frames 1..T-1 (rate
~ U(0.5, 1) per clip) and scores only the masked ones; sampling (simulator/engine/sampling.py)
unmasks a new frame in a few parallel steps.

The forward is split as embed -> transform -> head so that a KV-cached engine can feed one frame
at a time through `STTransformer.forward_with_kv` with the same embedding and head.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (dynamics model,
mask rate U(0.5, 1), additive action embeddings); Chang et al. 2022, "MaskGIT: Masked Generative
Image Transformer"; 1X Technologies' GENIE and Valevski et al. 2024, "Diffusion Models Are
Real-Time Game Engines" (GameNGen) for corrupting the context in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from simulator.models.dynamics_config import DynamicsConfig
from worldsim.nn.pretrained import PretrainedModel
from worldsim.nn.st_block import STTransformer


@dataclass
class ActionInputs:
    """Actions of a batch of clips; any subset of sources (the model's config says which it
    uses). Action i follows frame i and conditions frame i+1; A is the number of actions."""

    latent: Tensor | None = None  # (B, A) int64 latent action ids (LAM codes)
    discrete: Tensor | None = None  # (B, A) int64 true action ids
    continuous: Tensor | None = None  # (B, A, D) float true continuous actions

    def window(self, start: int, stop: int) -> ActionInputs:
        """Actions start..stop-1 of every source present."""
        return ActionInputs(*(None if a is None else a[:, start:stop] for a in self.as_tuple()))

    def select(self, rows_B: Tensor) -> ActionInputs:
        """The clips picked by a bool (B,) tensor, of every source present."""
        return ActionInputs(*(None if a is None else a[rows_B] for a in self.as_tuple()))

    def as_tuple(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.latent, self.discrete, self.continuous


@dataclass
class DynamicsOutput:
    loss: Tensor  # scalar: cross-entropy over the masked tokens
    # Detached scalars (the driver logs `loss` itself): masked_accuracy, changed_accuracy (on
    # the masked tokens that differ from the previous frame's), mask_rate (share of frames 1..
    # masked), copy_accuracy (the copy-the-last-frame baseline on the same tokens).
    metrics: dict[str, Tensor]


# Embedding of each action source: (B, A) ids or (B, A, D) floats -> (B, A, width).
ACTION_EMBEDDINGS: dict[str, Callable[[DynamicsConfig], nn.Module]] = {
    "latent": lambda cfg: nn.Embedding(cfg.num_latent_actions, cfg.width),
    "discrete": lambda cfg: nn.Embedding(cfg.num_discrete_actions, cfg.width),
    "continuous": lambda cfg: nn.Linear(cfg.continuous_dim, cfg.width),
}


class DynamicsModel(PretrainedModel):
    """MaskGIT dynamics over tokenizer tokens. `forward` is the training loss (so DDP wrappers
    work); `logits` and the embed / transform / head pieces are the inference API."""

    def __init__(self, cfg: DynamicsConfig | Mapping[str, Any]) -> None:
        super().__init__()
        cfg = cfg if isinstance(cfg, DynamicsConfig) else DynamicsConfig.from_dict(dict(cfg))
        cfg.validate()
        # config.json holds {"cfg": {...}}; from_pretrained calls cls(cfg=dict) (as the tokenizer).
        self.register_to_config(cfg=asdict(cfg))
        self.cfg = cfg
        d = cfg.width
        self.token_embed = nn.Embedding(cfg.num_codes + 1, d)  # + the mask id
        self.code_embed = None
        if cfg.code_levels:  # each id's FSQ digits in [-1, 1]; the mask id's are zeros
            self.code_embed = nn.Linear(len(cfg.code_levels), d, bias=False)
            self.code_digits: Tensor
            self.register_buffer("code_digits", _fsq_digits(cfg.code_levels), persistent=False)
        self.pos_space = nn.Parameter(torch.zeros(1, 1, cfg.grid**2, d))
        self.pos_time = nn.Parameter(torch.zeros(1, cfg.max_frames, 1, d))
        self.no_action = nn.Parameter(torch.zeros(1, 1, d))
        self.action_embeds = nn.ModuleDict(
            {source: ACTION_EMBEDDINGS[source](cfg) for source in cfg.action_sources}
        )
        self.transformer = STTransformer(
            d,
            cfg.depth,
            cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio,
            qk_norm=cfg.qk_norm,
            backend=cfg.attention,
            causal_time=True,
        )
        self.to_logits = nn.Linear(d, cfg.num_codes)
        for param in (self.pos_space, self.pos_time, self.no_action):
            nn.init.trunc_normal_(param, std=0.02)

    @property
    def num_codes(self) -> int:
        return self.cfg.num_codes

    @property
    def grid(self) -> int:
        return self.cfg.grid

    @property
    def num_latent_actions(self) -> int:
        return self.cfg.num_latent_actions

    def forward(self, tokens_BThw: Tensor, actions: ActionInputs) -> DynamicsOutput:
        return self.loss(tokens_BThw, actions)

    def loss(self, tokens_BThw: Tensor, actions: ActionInputs) -> DynamicsOutput:
        """Masked-token cross-entropy on clips of T >= 2 frames; actions A >= T - 1."""
        self.check_tokens(tokens_BThw)
        if tokens_BThw.shape[1] < 2:
            raise ValueError(f"the loss needs clips of >= 2 frames, got {tokens_BThw.shape[1]}")
        mask_BThw = self.draw_mask(tokens_BThw)
        inputs_BThw = tokens_BThw
        if self.training and self.cfg.scheduled_sampling > 0:
            inputs_BThw = self.own_context(tokens_BThw, mask_BThw, actions)
        if self.training and self.cfg.corrupt_max > 0:
            inputs_BThw = self.corrupt_context(inputs_BThw, mask_BThw)
        hidden_BTND = self.transform(self.embed(inputs_BThw, mask_BThw, actions))
        flat_mask = rearrange(mask_BThw, "b t h w -> b t (h w)")
        logits_MV = self.head(hidden_BTND[flat_mask]).float()  # masked positions only
        targets_M = tokens_BThw[mask_BThw]
        previous_BThw = torch.cat([tokens_BThw[:, :1], tokens_BThw[:, :-1]], dim=1)
        changed_M = previous_BThw[mask_BThw] != targets_M
        weight_M = 1.0 + (self.cfg.changed_weight - 1.0) * changed_M.float()
        token_loss_M = F.cross_entropy(logits_MV, targets_M, reduction="none")
        # A batch without a masked token (tiny grids only) gives a zero loss, not NaN.
        loss = (token_loss_M * weight_M).sum() / weight_M.sum().clamp_min(1e-6)
        with torch.no_grad():
            right_M = logits_MV.argmax(-1) == targets_M
            metrics = {
                "masked_accuracy": _mean(right_M.float()),
                # The same on tokens that differ from the previous frame's: what copying misses.
                "changed_accuracy": _mean(right_M[changed_M].float()),
                "mask_rate": mask_BThw[:, 1:].float().mean(),
                "copy_accuracy": _mean((previous_BThw[mask_BThw] == targets_M).float()),
            }
        return DynamicsOutput(loss=loss, metrics=metrics)

    def logits(
        self, tokens_BThw: Tensor, mask_BThw: Tensor | None, actions: ActionInputs
    ) -> Tensor:
        """Logits (B, T, h, w, num_codes) of every position; masked tokens are hidden from the
        model. Frame t's logits depend only on frames <= t and actions < t."""
        logits_BTNV = self.head(self.transform(self.embed(tokens_BThw, mask_BThw, actions)))
        return rearrange(logits_BTNV, "b t (h w) v -> b t h w v", h=self.cfg.grid)

    def embed(
        self,
        tokens_BThw: Tensor,
        mask_BThw: Tensor | None,
        actions: ActionInputs,
        start_frame: int = 0,
        drop_last_action: bool = False,
    ) -> Tensor:
        """Input embeddings (B, T, h*w, width) of frames start_frame .. start_frame + T - 1 of a
        clip. `actions` are indexed from the clip's frame 0 (action i follows frame i), so
        A >= start_frame + T - 1; `mask_BThw` (bool, True = masked) may be None.
        `drop_last_action` hides the action leading into the last frame, as `action_dropout`
        does in training: the unconditional branch of classifier-free guidance."""
        self.check_tokens(tokens_BThw, start_frame)
        b, t = tokens_BThw.shape[:2]
        ids_BThw = tokens_BThw
        if mask_BThw is not None:
            if mask_BThw.dtype != torch.bool or mask_BThw.shape != tokens_BThw.shape:
                raise ValueError(
                    f"mask must be a bool tensor shaped like the tokens {tuple(tokens_BThw.shape)}"
                    f", got {mask_BThw.dtype} {tuple(mask_BThw.shape)}"
                )
            ids_BThw = tokens_BThw.masked_fill(mask_BThw, self.cfg.mask_id)
        ids_BTN = rearrange(ids_BThw, "b t h w -> b t (h w)")
        x_BTND = self.token_embed(ids_BTN)
        if self.code_embed is not None:
            x_BTND = x_BTND + self.code_embed(self.code_digits[ids_BTN])
        x_BTND = x_BTND + self.pos_space + self.pos_time[:, start_frame : start_frame + t]
        action_BTD = self._action_embedding(actions, b, start_frame, t)
        if drop_last_action:
            action_BTD = torch.cat([action_BTD[:, :-1], torch.zeros_like(action_BTD[:, -1:])], 1)
        return x_BTND + action_BTD[:, :, None]

    def transform(self, x_BTND: Tensor) -> Tensor:
        """The ST transformer (causal in time), block by block so blocks can be checkpointed."""
        for block in self.transformer.blocks:
            if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x_BTND = checkpoint(block, x_BTND, use_reentrant=False)
            else:
                x_BTND = block(x_BTND)
        return self.transformer.norm(x_BTND)

    def head(self, x: Tensor) -> Tensor:
        """Transformer outputs (..., width) -> logits (..., num_codes)."""
        return self.to_logits(x)

    def _action_embedding(self, actions: ActionInputs, b: int, start: int, t: int) -> Tensor:
        """(B, T, width): the summed embeddings of the actions leading into each frame."""
        if not isinstance(actions, ActionInputs):
            raise ValueError(f"actions must be an ActionInputs, got {type(actions).__name__}")
        first = max(start - 1, 0)  # the action leading into frame `start`; frame 0 has none
        stop = start + t - 1
        emb = self.no_action.new_zeros(b, stop - first, self.cfg.width)
        for source, embedding in self.action_embeds.items():
            if getattr(actions, source) is None and self.cfg.source_dropout > 0:
                continue  # trained to run without it: the embedding a dropped source gets
            source_emb = embedding(self._source_actions(actions, source, b, stop)[:, first:stop])
            if self.training and self.cfg.source_dropout > 0:
                keep_B11 = torch.rand(b, 1, 1, device=emb.device) >= self.cfg.source_dropout
                source_emb = source_emb * keep_B11
            emb = emb + source_emb
        if self.training and self.cfg.action_dropout > 0:
            keep_BA1 = torch.rand(b, stop - first, 1, device=emb.device) >= self.cfg.action_dropout
            emb = emb * keep_BA1
        if start == 0:
            emb = torch.cat([self.no_action.expand(b, 1, -1), emb], dim=1)
        return emb

    def _source_actions(self, actions: ActionInputs, source: str, b: int, needed: int) -> Tensor:
        """actions.<source>, checked: ValueError naming the source and what is wrong."""
        cfg = self.cfg
        a = getattr(actions, source)
        if a is None:
            raise ValueError(
                f"this model is conditioned on {source!r} actions (action_sources="
                f"{cfg.action_sources}, trained with source_dropout=0) but actions.{source} "
                "is None"
            )
        continuous = source == "continuous"
        ndim = 3 if continuous else 2
        if a.ndim != ndim or a.shape[0] != b or a.shape[1] < needed:
            layout = f"({b}, A >= {needed}{', ' + str(cfg.continuous_dim) if continuous else ''})"
            raise ValueError(f"{source} actions must be {layout}, got shape {tuple(a.shape)}")
        if continuous:
            if not a.is_floating_point() or a.shape[2] != cfg.continuous_dim:
                raise ValueError(
                    f"continuous actions must be float of width continuous_dim="
                    f"{cfg.continuous_dim}, got {a.dtype} width {a.shape[2]}"
                )
            if not torch.isfinite(a).all():
                raise ValueError("continuous actions contain NaN or inf values")
            return a
        n = cfg.num_latent_actions if source == "latent" else cfg.num_discrete_actions
        if a.is_floating_point() or a.is_complex():
            raise ValueError(f"{source} actions must be integer ids, got {a.dtype}")
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= n):
            raise ValueError(
                f"{source} action ids must lie in [0, {n}), got min {int(a.min())} "
                f"max {int(a.max())}"
            )
        return a

    def draw_mask(self, tokens_BThw: Tensor) -> Tensor:
        """Training mask (bool, True = masked): each token of frames 1..T-1 with a per-clip
        probability r ~ U(mask_rate_min, mask_rate_max)."""
        b, device = tokens_BThw.shape[0], tokens_BThw.device
        lo, hi = self.cfg.mask_rate_min, self.cfg.mask_rate_max
        rate_B111 = lo + (hi - lo) * torch.rand(b, 1, 1, 1, device=device)
        mask_BThw = torch.rand(tokens_BThw.shape, device=device) < rate_B111
        # Frame 0 is never masked: it is the prompt every rollout starts from, no action explains
        # it, and predicting it would be unconditional image generation, which spends capacity
        # on a task sampling never asks for.
        mask_BThw[:, 0] = False
        return mask_BThw

    @torch.no_grad()
    def own_context(self, tokens_BThw: Tensor, mask_BThw: Tensor, actions: ActionInputs) -> Tensor:
        """For a share `scheduled_sampling` of the clips, the tokens left unmasked by `mask_BThw`
        replaced by the model's own draws: one pass over those clips alone under a fresh training
        mask, every masked token drawn at temperature 1. Frame 0 (the prompt) stays real.

        References: Bengio et al. 2015, "Scheduled Sampling for Sequence Prediction with
        Recurrent Neural Networks"."""
        own_B = torch.rand(tokens_BThw.shape[0], device=tokens_BThw.device)
        own_B = own_B < self.cfg.scheduled_sampling
        if not bool(own_B.any()):
            return tokens_BThw  # no clip drawn: skip the extra pass
        real_SThw = tokens_BThw[own_B]
        guess_mask_SThw = self.draw_mask(real_SThw)
        x_STND = self.embed(real_SThw, guess_mask_SThw, actions.select(own_B))
        hidden_MD = self.transform(x_STND)[rearrange(guess_mask_SThw, "s t h w -> s t (h w)")]
        draws_M = torch.distributions.Categorical(logits=self.head(hidden_MD).float()).sample()
        own_SThw = real_SThw.masked_scatter(guess_mask_SThw, draws_M)
        keep_SThw = mask_BThw[own_B]  # what the loss scores stays real
        out_BThw = tokens_BThw.clone()
        out_BThw[own_B] = torch.where(keep_SThw, real_SThw, own_SThw)
        return out_BThw

    def corrupt_context(self, tokens_BThw: Tensor, mask_BThw: Tensor) -> Tensor:
        """Replace a per-clip share c ~ U(0, corrupt_max) of the unmasked tokens by random codes."""
        b, device = tokens_BThw.shape[0], tokens_BThw.device
        rate_B111 = self.cfg.corrupt_max * torch.rand(b, 1, 1, 1, device=device)
        replace = (torch.rand(tokens_BThw.shape, device=device) < rate_B111) & ~mask_BThw
        noise = torch.randint_like(tokens_BThw, self.cfg.num_codes)
        return torch.where(replace, noise, tokens_BThw)

    def check_tokens(self, tokens: Tensor, start_frame: int = 0) -> None:
        """ValueError naming what is wrong with a tokens batch (frames start_frame..)."""
        if not isinstance(tokens, Tensor) or tokens.is_floating_point() or tokens.is_complex():
            raise ValueError(
                f"tokens must be an integer tensor, got {getattr(tokens, 'dtype', tokens)}"
            )
        g, max_t = self.cfg.grid, self.cfg.max_frames
        if tokens.ndim != 4 or tuple(tokens.shape[2:]) != (g, g):
            raise ValueError(
                f"tokens must be (B, T, {g}, {g}) (grid {g}), got shape {tuple(tokens.shape)}"
            )
        t = tokens.shape[1]
        if t < 1 or start_frame < 0 or start_frame + t > max_t:
            raise ValueError(
                f"frames {start_frame}..{start_frame + t - 1} do not fit max_frames={max_t}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.num_codes):
            raise ValueError(
                f"token ids must lie in [0, {self.num_codes}) (num_codes), got "
                f"min {int(tokens.min())} max {int(tokens.max())}"
            )

    def check_compatible(self, tokenizer: Any = None, lam: Any = None) -> None:
        """ValueError naming every mismatch between this model and a tokenizer / LAM."""
        cfg, problems = self.cfg, []
        if tokenizer is not None:
            if tokenizer.num_codes != cfg.num_codes:
                problems.append(
                    f"tokenizer has {tokenizer.num_codes} codes but dynamics num_codes is "
                    f"{cfg.num_codes}"
                )
            if tokenizer.cfg.grid != cfg.grid:
                problems.append(
                    f"tokenizer grid is {tokenizer.cfg.grid} but dynamics grid is {cfg.grid}"
                )
            told = getattr(tokenizer.cfg, "action_dim", 0)  # a delta renderer told controls
            takes = cfg.continuous_dim if "continuous" in cfg.action_sources else 0
            if told and told != takes:
                problems.append(
                    f"the tokenizer's renderer is told {told} continuous controls a frame but "
                    f"the dynamics takes {takes}"
                )
        if lam is not None and lam.num_actions != cfg.num_latent_actions:
            problems.append(
                f"latent action model has {lam.num_actions} actions but dynamics "
                f"num_latent_actions is {cfg.num_latent_actions}"
            )
        if problems:
            raise ValueError("incompatible checkpoints: " + "; ".join(problems))


def _fsq_digits(levels: list[int]) -> Tensor:
    """(prod(levels) + 1, len(levels)): each FSQ code's digits scaled to [-1, 1] (the code
    vector the tokenizer's decoder reads; tokenizer.quantizers.FSQ's mixed radix), then a row of
    zeros for the mask id."""
    levels_t = torch.tensor(levels)
    basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels_t[:-1]]), 0)
    ids = torch.arange(math.prod(levels))[:, None]
    half = levels_t // 2
    digits = (ids // basis % levels_t - half).float() / half.float()
    return torch.cat([digits, digits.new_zeros(1, len(levels))])


def _mean(x: Tensor) -> Tensor:
    return x.mean() if x.numel() else x.new_zeros(())
