"""Configuration of a shard job (`worldsim data shard`), validated before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_VIDEO_FPS = 10.0


@dataclass
class ShardConfig:
    sources: list[str] = field(default_factory=list)  # paths, globs, "procgen:coinrun", shard URLs
    out: str = ""  # output folder; shards are <out>/<split>-000000.tar, ...
    split: str = "train"
    frames: int = 16  # T, frames per clip
    stride: int = 16  # frames between the starts of consecutive clips (< frames overlaps them)
    size: int = 64  # square output side: resize the short side to this, then centre-crop
    # Videos are resampled to this rate (None: DEFAULT_VIDEO_FPS). Games and input shards keep
    # their own rate (Procgen and Atari: 15 fps), so --fps is refused for a job without videos.
    fps: float | None = None
    # Mean |frame difference| (0-255 scale, at output resolution) above which two consecutive
    # frames count as a scene cut; clips never straddle one.
    scene_cut_threshold: float = 40.0
    # Clips whose mean |frame difference| is below this are dropped as near-static (Genie's
    # curation removed such clips; a still frame teaches the dynamics nothing).
    static_threshold: float = 0.5
    units_per_shard: int = 8  # input files or game episodes per shard; fixes the shard plan
    seed: int = 0  # output is a pure function of (config, inputs, seed)
    workers: int = 2  # parallel processes on this machine
    engine: str = "process"  # "process" (multiprocessing) or "ray" (extra `distributed`)
    ray_address: str | None = None  # None: start a local Ray; "auto" or ray://...: join a cluster
    license: str = "unknown"  # origin/license tag stored in every video clip's metadata
    # Game recording (procgen:<game>, atari:<Game>)
    episodes: int = 8  # episodes to record
    level_start: int = 0  # episode i plays level seed level_start + i; keep splits disjoint
    max_steps: int = 500  # cap on one episode's length
    sticky_min: int = 1  # the random policy repeats each action a uniform number of steps
    sticky_max: int = 4  # in [sticky_min, sticky_max] (a held key must last to show motion)
    # How often the policy draws each action id (any non-negative scale; None: uniform). YAML
    # only. CoinRun's 15 ids act as 6 effects (`worldsim data effects`), 8 of them NOOP, so a
    # uniform draw idles half the time; weights over one id per effect show every effect.
    action_weights: list[float] | None = None
    distribution_mode: str = "easy"  # procgen difficulty
    frame_skip: int = 1  # env steps per recorded frame (Atari v5 already skips 4)

    @property
    def video_fps(self) -> float:
        """The rate videos are resampled to."""
        return DEFAULT_VIDEO_FPS if self.fps is None else self.fps

    def validate(self) -> None:
        """Raise ValueError naming the first nonsense option."""
        problems = []
        if not self.sources:
            problems.append("no SOURCE given")
        if not self.out:
            problems.append("--out is required")
        if self.frames < 2:
            problems.append(f"--frames must be >= 2 (a clip needs motion), got {self.frames}")
        if self.stride < 1:
            problems.append(f"--stride must be >= 1, got {self.stride}")
        if self.size < 1:
            problems.append(f"--size must be >= 1, got {self.size}")
        if self.fps is not None and not self.fps > 0:
            problems.append(f"--fps must be > 0, got {self.fps}")
        if self.units_per_shard < 1:
            problems.append(f"--units-per-shard must be >= 1, got {self.units_per_shard}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if self.engine not in ("process", "ray"):
            problems.append(f"--engine must be 'process' or 'ray', got {self.engine!r}")
        if self.episodes < 1:
            problems.append(f"--episodes must be >= 1, got {self.episodes}")
        if self.level_start < 0:
            problems.append(f"--level-start must be >= 0, got {self.level_start}")
        if not 1 <= self.sticky_min <= self.sticky_max:
            problems.append(
                f"need 1 <= --sticky-min <= --sticky-max, got {self.sticky_min}, {self.sticky_max}"
            )
        if self.action_weights is not None and (
            min(self.action_weights, default=-1) < 0 or not sum(self.action_weights) > 0
        ):
            weights = self.action_weights
            problems.append(f"action_weights must be >= 0 with a positive sum, got {weights}")
        if self.max_steps < self.frames:
            problems.append(f"--max-steps ({self.max_steps}) must be >= --frames ({self.frames})")
        if self.frame_skip < 1:
            problems.append(f"--frame-skip must be >= 1, got {self.frame_skip}")
        if not self.split or "/" in self.split or "-" in self.split:
            problems.append(f"--split must be a plain name without '/' or '-', got {self.split!r}")
        if problems:
            raise ValueError("bad shard options: " + "; ".join(problems))
