"""The interactive world engine shared by the app, `worldsim rollout` and evaluation.

`WorldSimulator.reset(prompt)` encodes the prompt frames; `step(state, action)` samples the next
frame's tokens with MaskGIT and decodes them to RGB; `rollout(prompt, actions)` does both for a
whole action sequence. A batch of B worlds steps together in one call. `observe(state, action,
tokens)` appends a real frame instead of a sampled one (teacher forcing, as evaluation uses it).

The cost of a step is one frame, not the whole context: the state keeps per-block temporal
key/value caches (worldsim.nn.kv_cache.KVCache) of the dynamics model and of the tokenizer's
causal decoder. Each MaskGIT iteration runs only the new frame's tokens through the dynamics
against the cached past, writing their keys/values to scratch slots; once the frame is final it
runs once more to keep its keys/values, and the decoder turns it into pixels in one frame-sized
pass. Both models learn absolute temporal positions for `max_frames` frames, so the context is a
window that jumps by `hop` frames when full, with the caches rebuilt once from the kept frames
(worldsim.nn.kv_cache.frames_to_drop). `EngineConfig(kv_cache=False)` is the uncached
reference: it re-runs each whole window under the same rule (simulator/engine/sampling.py), and
gives the same tokens for the same seed.

States are values: `step` returns a new state and never changes the one it was given, so a
failed step leaves its input usable, and stepping twice from one state branches the world.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments"; Chang et al. 2022,
"MaskGIT: Masked Generative Image Transformer".
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from simulator.engine import batching
from simulator.engine.prompt import prompt_frames
from simulator.engine.sampling import (
    CachedWindow,
    Generators,
    SamplingConfig,
    commit_frames,
    prefill_cache,
    sample_next_frame,
    sample_next_frames_cached,
)
from simulator.engine.state import EngineConfig, WorldState
from simulator.models.dynamics import ActionInputs, DynamicsModel
from simulator.models.lam import LatentActionModel
from simulator.world.checkpoint import load_world
from simulator.world.spec import WorldSpec
from tokenizer.delta import DeltaState
from tokenizer.model import DecodeState, VideoTokenizer
from tokenizer.registry import AnyTokenizer
from worldsim.nn.attention import set_attention_backend, set_query_by_query
from worldsim.nn.kv_cache import KVCache, check_hop, frames_to_drop

_ENGINE_IDS = itertools.count()


class WorldSimulator:
    """Tokenizer + dynamics (+ optional LAM) as a steerable world. See the module docstring."""

    def __init__(
        self,
        tokenizer: AnyTokenizer,
        dynamics: DynamicsModel,
        spec: WorldSpec | None = None,
        cfg: EngineConfig | None = None,
        lam: LatentActionModel | None = None,
    ) -> None:
        cfg = cfg or EngineConfig()
        cfg.validate()
        spec = spec or WorldSpec.default_for(dynamics)
        dynamics.check_compatible(tokenizer, lam)
        spec.check(dynamics, lam)
        self.cfg, self.spec, self.action_space = cfg, spec, spec.action_space
        self.device = torch.device(cfg.device)
        self.tokenizer = tokenizer.to(self.device).eval()
        self.dynamics = dynamics.to(self.device).eval()
        self.lam = None if lam is None else lam.to(self.device).eval()
        for model in (self.tokenizer, self.dynamics, self.lam):
            if model is not None and cfg.attention is not None:
                set_attention_backend(model, cfg.attention)
        for model in (self.tokenizer, self.dynamics):  # cached == uncached, bit for bit
            set_query_by_query(model)
        self.sampling = cfg.sampling or spec.sampling
        hop = cfg.hop if cfg.hop is not None else spec.hop
        self.hop = hop or dynamics.cfg.max_frames // 2
        self.decoder_hop = hop or tokenizer.cfg.max_frames // 2
        check_hop(self.hop, dynamics.cfg.max_frames)
        check_hop(self.decoder_hop, tokenizer.cfg.max_frames)
        self._id = next(_ENGINE_IDS)
        if cfg.compile or cfg.cuda_graphs:
            self._compile("reduce-overhead" if cfg.cuda_graphs else None)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], cfg: EngineConfig | None = None
    ) -> WorldSimulator:
        """Load a world folder written by `simulator.world.checkpoint.save_world`."""
        world = load_world(path, device=(cfg or EngineConfig()).device)
        return cls(world.tokenizer, world.dynamics, world.spec, cfg, world.lam)

    @property
    def max_prompt_frames(self) -> int:
        """Longest prompt kept: room for one new frame in the dynamics window."""
        return min(self.dynamics.cfg.max_frames - 1, self.tokenizer.cfg.max_frames)

    def reset(self, prompt: Any, prompt_actions: Any = None, seed: int | None = None) -> WorldState:
        """Start B worlds from prompt frames or an image (simulator.engine.prompt.prompt_frames).

        A prompt of T > 1 frames needs the T - 1 actions taken between them: `prompt_actions`
        (B, T-1) ids, or, for latent action worlds with a LAM, inferred from the frames. Longer
        prompts than `max_prompt_frames` keep their last frames, with a warning."""
        return self._start(prompt, prompt_actions, seed)[1]

    def step(
        self, state: WorldState, action: Any, sampling: SamplingConfig | None = None
    ) -> tuple[Tensor, WorldState]:
        """The next frame (B, C, H, W) in [-1, 1] of every world after `action` (one id per
        world, or one id for all), and the new state. `state` itself is left unchanged.
        `sampling` overrides the engine's sampling for this frame (the app's settings panel)."""
        if sampling is not None:
            sampling.validate()
        new = self._advance([state], [action], None, sampling)[0]
        return new.frame_BCHW, new

    def step_many(
        self,
        states: Sequence[WorldState],
        actions: Sequence[Any],  # one id (or one vector of controls) per state
        sampling: SamplingConfig | None = None,
    ) -> list[tuple[Tensor, WorldState]]:
        """`step` for many one-world states at once (the app's players): states of equal shapes
        (window length, caches) are stacked, and the stacks step in one dynamics pass per
        MaskGIT step, each over its own cache; every world has its own random generator, so
        every (frame, state) returned is the one `step(states[i], actions[i], sampling)` returns
        (simulator/engine/batching.py). Measured on 2 cores with the CoinRun world, windows at
        different points: 4 worlds 43.5 ms a call (92 worlds/s) against 65.5 ms stacking only
        equal shapes."""
        if len(states) != len(actions):
            raise ValueError(f"{len(states)} states but {len(actions)} actions")
        for state in states:
            self._check_state(state)
            if state.batch_size != 1 or isinstance(state.rng_state, tuple):
                raise ValueError("step_many steps states of one world each (reset one prompt)")
        if sampling is not None:
            sampling.validate()
        skip = ("frame_index", "rng_state")
        groups = batching.groups([batching.signature(s, skip) for s in states])
        stacked = [
            dataclasses.replace(
                batching.stack(members, skip),
                rng_state=tuple(s.rng_state for s in members),  # type: ignore[misc]  # one each
            )
            for members in ([states[i] for i in group] for group in groups)
        ]
        news = self._advance(stacked, [[actions[i] for i in g] for g in groups], None, sampling)
        done: dict[int, tuple[Tensor, WorldState]] = {}
        for group, new in zip(groups, news, strict=True):
            for j, i in enumerate(group):
                one = dataclasses.replace(
                    batching.unstack(new, j, len(group), skip),
                    frame_index=states[i].frame_index + 1,
                    rng_state=new.rng_state[j],
                )
                done[i] = (one.frame_BCHW, one)
        return [done[i] for i in range(len(states))]

    def observe(
        self, state: WorldState, action: Any, tokens_Bhw: Tensor, frame: Tensor | None = None
    ) -> tuple[Tensor, WorldState]:
        """Teacher forcing: like `step`, but the next frame is an observed one (its tokens, from
        `encode`) instead of a sampled one, so the world goes on from what really happened. The
        sampler's random stream stays where `state` left it. `frame` (B, C, H, W), the real
        frame itself, is what a delta tokenizer renders the frame after from; a grid
        tokenizer's window is the tokens."""
        new = self._advance([state], [action], (tokens_Bhw, frame), None)[0]
        return new.frame_BCHW, new

    def encode(self, frames: Any, actions: Any = None) -> Tensor:
        """Tokens (B, T, h, w) of real frames (any prompt form), encoded together as `reset`
        encodes a prompt: the tokens `observe` takes. A renderer told the controls also reads
        the `actions` (B, T - 1 or T, D) taken between the frames."""
        frames_BTCHW = prompt_frames(frames, self.tokenizer.cfg.image_size).to(self.device)
        actions = None if actions is None else torch.as_tensor(actions, device=self.device)
        with self._inference():
            return self.tokenizer.encode(frames_BTCHW, actions)

    def _advance(
        self,
        states: list[WorldState],
        actions: list[Any],
        observed: tuple[Tensor, Tensor | None] | None,
        sampling: SamplingConfig | None,
    ) -> list[WorldState]:
        """The next frame of every world of `states` (one state, or `step_many`'s groups of
        stacked worlds whose windows differ), through one dynamics pass per MaskGIT step."""
        for state in states:
            self._check_state(state)
        action_Bs = [
            self._action_ids(a, (s.batch_size,)) for s, a in zip(states, actions, strict=True)
        ]
        generators = [self._generators(s.rng_state) for s in states]
        with self._inference():
            windows = []
            for state, action_B in zip(states, action_Bs, strict=True):
                tokens_BThw, actions_BA, cache = self._make_room(state)
                actions_BA = torch.cat([actions_BA, action_B[:, None]], dim=1)  # (B, A[, n])
                windows.append((tokens_BThw, actions_BA, cache))
            frame = None
            if observed is None:
                new_Bhw = self._sample(windows, generators, sampling)
            else:  # one state
                new_Bhw, frame = self._observed(observed[0], windows[0][0]), observed[1]
                frame = None if frame is None else frame.to(self.device)
            caches = self._commit(windows, new_Bhw)
            news = []
            sizes = [s.batch_size for s in states]
            for i, (state, new_i) in enumerate(zip(states, new_Bhw.split(sizes), strict=True)):
                tokens_BThw, actions_BA, _ = windows[i]
                frame_BCHW, decoder = self._decode(new_i, state, frame, action_Bs[i])
                news.append(
                    WorldState(
                        tokens_BThw=torch.cat([tokens_BThw, new_i[:, None]], dim=1),
                        actions_BA=actions_BA,
                        frame_index=state.frame_index + 1,
                        frame_BCHW=frame_BCHW.float(),
                        cache=caches[i],
                        decoder=decoder,
                        rng_state=_generator_state(generators[i]),
                        engine_id=self._id,
                    )
                )
        return news

    def _decode(
        self, new_Bhw: Tensor, state: WorldState, frame: Tensor | None, action_B: Tensor
    ) -> tuple[Tensor, DecodeState | DeltaState]:
        """The tokenizer's next frames (a renderer told the controls reads `action_B`, the
        others need only the tokens). Worlds stacked by `step_many` are rendered one by one:
        a batched convolution rounds differently in the last bits, which would change some
        pixels by a level, and rendering is per-world work anyway (5.6 ms for one world, 18.7
        for four, shipped world on 2 cores)."""
        if not isinstance(state.rng_state, tuple):
            return self.tokenizer.decode_step(new_Bhw, state.decoder, frame, action_B)
        b, rendered = new_Bhw.shape[0], []
        for i in range(b):
            observed = None if frame is None else frame[i : i + 1]
            decoder = batching.unstack(state.decoder, i, b)
            one = self.tokenizer.decode_step(
                new_Bhw[i : i + 1], decoder, observed, action_B[i : i + 1]
            )
            rendered.append(one)
        return torch.cat([f for f, _ in rendered]), batching.stack([d for _, d in rendered])

    def _generators(self, rng_state: Tensor | tuple[Tensor, ...]) -> Generators:
        """The sampling generator(s) of a state, set to where it left them."""
        states = rng_state if isinstance(rng_state, tuple) else (rng_state,)
        generators = [torch.Generator(self.device) for _ in states]
        for generator, saved in zip(generators, states, strict=True):
            generator.set_state(saved)
        return generators if isinstance(rng_state, tuple) else generators[0]

    def _observed(self, tokens_Bhw: Tensor, window_BThw: Tensor) -> Tensor:
        expected = (window_BThw.shape[0], *window_BThw.shape[2:])
        if tuple(tokens_Bhw.shape) != expected:
            raise ValueError(
                f"observed tokens must be (B, h, w) = {expected}, got {tuple(tokens_Bhw.shape)}"
            )
        return tokens_Bhw.to(self.device, window_BThw.dtype)

    def rollout(
        self, prompt: Any, actions: Any, prompt_actions: Any = None, seed: int | None = None
    ) -> Tensor:
        """Video (B, T_prompt + A, C, H, W) in [-1, 1]: the decoded prompt frames, then one frame
        per action; `actions` (B, A) ids, or a sequence of A ids for every world."""
        recon_BTCHW, state = self._start(prompt, prompt_actions, seed)
        ids = torch.as_tensor(actions)
        per_action = 1 if self.action_space.continuous else 0  # a continuous action is a vector
        if ids.ndim == 1 + per_action:
            ids = ids[None].expand(state.batch_size, *ids.shape)
        if ids.ndim != 2 + per_action:
            shape = tuple(ids.shape)
            raise ValueError(f"rollout actions must be (B, A) or (A,) a world, got {shape}")
        ids = self._action_ids(ids, (state.batch_size, ids.shape[1]))
        frames = list(recon_BTCHW.unbind(dim=1))
        for action_B in ids.unbind(dim=1):
            frame_BCHW, state = self.step(state, action_B)
            frames.append(frame_BCHW)
        return torch.stack(frames, dim=1)

    def _start(
        self, prompt: Any, prompt_actions: Any, seed: int | None
    ) -> tuple[Tensor, WorldState]:
        frames_BTCHW = prompt_frames(prompt, self.tokenizer.cfg.image_size).to(self.device)
        b, t = frames_BTCHW.shape[:2]
        given = None
        if prompt_actions is not None:
            given = self._action_ids(prompt_actions, (b, t - 1))
        keep = self.max_prompt_frames
        if t > keep:
            warnings.warn(
                f"the prompt has {t} frames; keeping its last {keep} (the dynamics window needs "
                "room for the next frame)",
                stacklevel=3,
            )
            frames_BTCHW = frames_BTCHW[:, t - keep :]
            given = None if given is None else given[:, t - keep :]
        actions_BA = self._infer_prompt_actions(frames_BTCHW) if given is None else given
        generator = torch.Generator(self.device).manual_seed(
            self.cfg.seed if seed is None else seed
        )
        with self._inference():
            tokens_BThw, recon_BTCHW, decoder = self.tokenizer.start(
                frames_BTCHW, self.decoder_hop, cached=self.cfg.kv_cache, actions=actions_BA
            )
            cache = self._prefill(tokens_BThw, actions_BA) if self.cfg.kv_cache else None
        state = WorldState(
            tokens_BThw=tokens_BThw,
            actions_BA=actions_BA,
            frame_index=tokens_BThw.shape[1] - 1,
            frame_BCHW=recon_BTCHW[:, -1].float(),
            cache=cache,
            decoder=decoder,
            rng_state=generator.get_state(),
            engine_id=self._id,
        )
        return recon_BTCHW.float(), state

    def _infer_prompt_actions(self, frames_BTCHW: Tensor) -> Tensor:
        """The T - 1 actions between prompt frames given none: the LAM's latent actions."""
        b, t = frames_BTCHW.shape[:2]
        if t == 1:
            return self._action_ids([], (b, 0))
        if self.action_space.type == "latent" and self.lam is not None:
            with self._inference():
                return self.lam.encode(frames_BTCHW)
        raise ValueError(
            f"a prompt of {t} frames needs the {t - 1} actions taken between them "
            "(prompt_actions), or a latent action world with a LAM to infer them; a single "
            "frame needs none"
        )

    def _make_room(self, state: WorldState) -> tuple[Tensor, Tensor, KVCache | None]:
        """The window the next frame is made in: the state's, or after a jump by `hop` frames
        with the cache rebuilt from the kept frames. The cache returned may be written to."""
        tokens_BThw, actions_BA, cache = state.tokens_BThw, state.actions_BA, state.cache
        drop = frames_to_drop(tokens_BThw.shape[1], self.dynamics.cfg.max_frames, self.hop)
        if drop:
            tokens_BThw, actions_BA = tokens_BThw[:, drop:], actions_BA[:, drop:]
            cache = self._prefill(tokens_BThw, actions_BA) if cache is not None else None
        return tokens_BThw, actions_BA, None if cache is None else cache.writable()

    def _prefill(self, tokens_BThw: Tensor, actions_BA: Tensor) -> KVCache:
        """The dynamics cache of a window of frames from temporal position 0."""
        return prefill_cache(self.dynamics, tokens_BThw, self._inputs(actions_BA))

    def _sample(
        self,
        windows: list[tuple[Tensor, Tensor, KVCache | None]],
        generators: list[Generators],
        sampling: SamplingConfig | None = None,
    ) -> Tensor:
        """MaskGIT tokens (B, h, w) of the frame after each window (tokens, actions A == T,
        cache), the windows' worlds in order. Cached, every window samples in one pass (each
        world then has its own generator when there are several windows); uncached, window
        by window."""
        model, sampling = self.dynamics, sampling or self.sampling
        if windows[0][2] is None:
            return torch.cat(
                [
                    sample_next_frame(model, tokens_BThw, self._inputs(actions_BA), sampling, gen)
                    for (tokens_BThw, actions_BA, _), gen in zip(windows, generators, strict=True)
                ]
            )
        cached = [CachedWindow(c, self._inputs(a)) for _, a, c in windows if c is not None]
        flat = generators[0] if len(generators) == 1 else [g for gs in generators for g in gs]  # type: ignore[union-attr]
        return sample_next_frames_cached(model, cached, sampling, flat)

    def _commit(
        self, windows: list[tuple[Tensor, Tensor, KVCache | None]], new_Bhw: Tensor
    ) -> list[KVCache | None]:
        """Each window's cache extended by its worlds' new tokens, in one pass (uncached: None)."""
        cached = [CachedWindow(c, self._inputs(a)) for _, a, c in windows if c is not None]
        if not cached:
            return [None] * len(windows)
        return list(commit_frames(self.dynamics, cached, new_Bhw))

    def _inputs(self, actions_BA: Tensor) -> ActionInputs:
        return ActionInputs(**{self.action_space.type: actions_BA})

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, WorldState):
            raise ValueError(
                f"step() needs a WorldState from reset(prompt), got {type(state).__name__}: "
                "call reset first"
            )
        if state.engine_id != self._id:
            raise ValueError("this state was made by another WorldSimulator; reset this one")

    def _action_ids(self, actions: Any, shape: Sequence[int]) -> Tensor:
        """The actions as the dynamics takes them, checked against the action space
        (simulator/world/action_space.py): ids of `shape`, or controls of (*shape, n)."""
        return self.action_space.tensor(actions, tuple(shape), self.device)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        bf16 = self.cfg.dtype == "bfloat16"
        with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, enabled=bf16):
            yield

    def _compile(self, mode: str | None) -> None:
        """Compile the frame-sized modules in place (the engine owns its models)."""
        transformers = [self.dynamics.transformer]
        if isinstance(self.tokenizer, VideoTokenizer):
            transformers.append(self.tokenizer.decoder)
            self.tokenizer.head.compile(mode=mode, dynamic=False)
        for module in [m for t in transformers for b in t.blocks for m in (b.space, b.mlp)]:
            module.compile(mode=mode, dynamic=False)


def _generator_state(generator: Generators) -> Tensor | tuple[Tensor, ...]:
    """A state's `rng_state`: the generator's state, or each world's."""
    if isinstance(generator, torch.Generator):
        return generator.get_state()
    return tuple(g.get_state() for g in generator)
