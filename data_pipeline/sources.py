"""Sources: turn SOURCE strings into an ordered list of work units.

A work unit is the smallest piece of input the shard job schedules: one video file, one game
episode, or one existing shard. Its clips are a pure function of (unit, config), so the shard plan
(units grouped `units_per_shard` at a time, in list order) is deterministic, a shard can be
written by any process on any machine, and a rerun can skip shards already on disk.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from data_pipeline.config import ShardConfig
from data_pipeline.schema import ActionSpace, Clip


class WorkUnit(Protocol):
    @property
    def uid(self) -> str:
        """Stable, unique, filename-safe id without '.'; prefixes the sample keys of its clips."""
        ...

    def action_space(self) -> ActionSpace | None:
        """The action space of this unit's clips (None when actions are unknown)."""
        ...

    def clips(self, cfg: ShardConfig, stats: Counter[str]) -> Iterator[Clip]:
        """Yield this unit's clips; count skips/filters in `stats` (e.g. stats["static_dropped"]).

        A unit whose input is bad (corrupt file, ...) logs a warning, increments
        stats["bad_inputs"] and yields nothing; it never raises for bad input data.
        """
        ...


GAME_PREFIXES = ("procgen:", "atari:", "gym:")


def resolve_sources(cfg: ShardConfig) -> list[WorkUnit]:
    """SOURCE strings -> work units, in a deterministic order. Fails at once on a missing path,
    an empty folder or an unknown game, with a message naming it."""
    from data_pipeline import games, shard_source, video

    units: list[WorkUnit] = []
    for src in cfg.sources:
        if src.startswith(GAME_PREFIXES):
            units.extend(games.episode_units(src, cfg))
        elif shard_source.is_shard_spec(src):
            units.extend(shard_source.shard_units(src))
        else:
            units.extend(video.video_units(src))
    uids = [u.uid for u in units]
    dupes = sorted({u for u in uids if uids.count(u) > 1})
    if dupes:
        raise ValueError(f"the same input was given more than once: {dupes[:5]}")
    return units
