"""What the engine is configured with (`EngineConfig`) and what it hands back after each frame
(`WorldState`): the values simulator/engine/world_simulator.py steps, kept apart from the
stepping so that the app, evaluation and batching can name them without the engine's code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from simulator.engine.sampling import SamplingConfig
from tokenizer.delta import DeltaState
from tokenizer.model import DecodeState
from worldsim.nn.kv_cache import KVCache

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class EngineConfig:
    sampling: SamplingConfig | None = None  # None: world.json's default (4 MaskGIT steps)
    hop: int | None = None  # window jump in frames; None: world.json's, else max_frames // 2
    kv_cache: bool = True  # False: the uncached reference, re-running every whole window
    device: str = "cpu"
    # "bfloat16" runs the matmuls under autocast (weights stay fp32; sampling softmax in fp32).
    dtype: str = "float32"
    attention: str | None = None  # one backend for every model (ATTENTION_BACKENDS); None: as saved
    # torch.compile each ST block's spatial attention and MLP and the decoder's pixel head: the
    # frame-sized, fixed-shape parts of a step (the cached temporal attention stays eager).
    compile: bool = False
    cuda_graphs: bool = False  # CUDA only: compile with mode="reduce-overhead" (CUDA graphs)
    seed: int = 0  # reset() default

    def validate(self) -> None:
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            problems.append(f"cuda_graphs needs a CUDA device, got device {self.device!r}")
        if self.sampling is not None:
            try:
                self.sampling.validate()
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise ValueError("bad engine config: " + "; ".join(problems))


@dataclass(frozen=True, eq=False)  # holds tensors: compare fields, not states
class WorldState:
    """B worlds after their newest frame. Create with `WorldSimulator.reset`."""

    tokens_BThw: Tensor  # the dynamics window: frames frame_index-T+1 .. frame_index
    actions_BA: Tensor  # the A = T - 1 actions between the window's frames (action i after frame i)
    frame_index: int  # frames since the first prompt frame, of the newest frame
    frame_BCHW: Tensor  # the newest frame, decoded, float in [-1, 1]
    cache: KVCache | None  # dynamics temporal keys/values of the window; None when uncached
    # What the tokenizer renders the next frame from: the grid decoder's token window and cache,
    # or the delta renderer's last two frames.
    decoder: DecodeState | DeltaState
    # The sampling generator's state after the newest frame: one for all B worlds, or one per
    # world while `step_many` steps worlds stacked.
    rng_state: Tensor | tuple[Tensor, ...]
    engine_id: int  # the engine that made it

    @property
    def batch_size(self) -> int:
        return self.tokens_BThw.shape[0]
