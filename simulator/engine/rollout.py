"""`worldsim rollout`: play an action sequence in a world and write the video.

    worldsim rollout --actions "RIGHT*12,RIGHT+UP*4" --out out/rollout.mp4
    worldsim rollout --checkpoint WORLD --prompt IMAGE_OR_CLIP --actions "0,0,3,3" --out x.gif

Without `--checkpoint` the world is the one shipped in the package (worldsim.worlds), and
without `--prompt` the world's first start frame (`WORLD/starts/`). The prompt is an image, a
video or a shard sample (simulator.engine.prompt.load_prompt); a clip keeps what
`simulator.engine.prompt.prompt_and_actions` keeps. The video (`.mp4` or `.gif`) shows the decoded
prompt frames, then one frame per action, enlarged by pixel repetition.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simulator.engine.sampling_config import SamplingConfig
from simulator.world.spec import parse_actions, read_world_spec
from worldsim.io.media import VIDEO_WRITERS
from worldsim.worlds import shipped_world

# torch and the models load inside `rollout`, after every argument has been checked: a typo in
# --actions is refused in a fraction of a second, not after seconds of imports.


@dataclass
class RolloutResult:
    path: Path  # the video written
    world: Path
    prompt: str
    note: str  # what of the prompt was kept
    actions: int
    frames: int  # in the video: prompt frames + one per action
    sampling: SamplingConfig
    seed: int

    def render(self) -> str:
        return (
            f"rollout: world {self.world}, prompt {self.prompt} ({self.note}), {self.actions} "
            f"actions, {self.sampling.steps} MaskGIT steps, temperature "
            f"{self.sampling.temperature}, seed {self.seed} -> {self.path} ({self.frames} frames)"
        )


def default_prompt(world: Path) -> Path:
    """The first start frame a world folder ships (`starts/*.png`)."""
    starts = sorted((world / "starts").glob("*.png"))
    if not starts:
        raise ValueError(f"world {world} ships no start frames (starts/*.png); give --prompt")
    return starts[0]


def rollout(
    actions: str,
    out: str,
    checkpoint: str | None = None,
    prompt: str | None = None,
    steps: int | None = None,
    temperature: float | None = None,
    guidance: float | None = None,
    seed: int = 0,
    fps: float = 8.0,
    device: str = "cpu",
    scale: int = 4,
) -> RolloutResult:
    """Load the world, roll it out from `prompt` under `actions`, write the video to `out`.
    Every argument is checked against the world's `world.json` before a model loads."""
    if fps <= 0 or scale < 1:
        raise ValueError(f"fps must be > 0 and scale >= 1, got fps {fps}, scale {scale}")
    if Path(out).suffix.lower() not in VIDEO_WRITERS:
        raise ValueError(f"--out must end in {' or '.join(VIDEO_WRITERS)}, got {out!r}")
    world = Path(checkpoint) if checkpoint is not None else shipped_world()
    spec = read_world_spec(world)
    ids = parse_actions(actions, spec.action_space)
    sampling = spec.sampling.override(steps=steps, temperature=temperature, guidance=guidance)
    prompt = prompt if prompt is not None else str(default_prompt(world))
    from simulator.engine.prompt import load_prompt, prompt_and_actions
    from simulator.engine.state import EngineConfig
    from simulator.engine.world_simulator import WorldSimulator
    from worldsim.io.media import to_uint8_clips, write_video

    loaded = load_prompt(prompt)
    sim = WorldSimulator.from_pretrained(
        world, EngineConfig(sampling=sampling, device=device, seed=seed)
    )
    frames, prompt_actions, note = prompt_and_actions(loaded, sim)
    video = sim.rollout(frames[None], [ids], prompt_actions=prompt_actions)
    path = write_video(to_uint8_clips(video[0]), out, fps, scale)
    return RolloutResult(path, world, prompt, note, len(ids), video.shape[1], sampling, seed)
