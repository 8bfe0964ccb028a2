"""Streaming shards as resumable batches, generic over what a sample holds.

An epoch is laid out before any byte is read: the shard list is permuted by (seed, epoch), dealt
round-robin to the distributed processes, then to each process's DataLoader workers. Every consumer
streams its own shards through a webdataset pipeline (read -> shuffle buffer of raw samples ->
decode -> batch, all in the worker), so each sample is seen exactly once per epoch and the whole
epoch is a pure function of (seed, epoch, layout). torch's DataLoader takes one batch from each live
worker in turn, so the main process knows, at every batch, how many raw samples each worker has
consumed; that is the resume state. Resuming skips those raw samples (shuffled but never decoded)
and rotates the workers so that the round-robin continues where it stopped.

A `SampleFormat` names the functions that decode one raw sample and collate decoded samples into a
batch: `data_pipeline.loader.ShardLoader` streams frame shards, `data_pipeline.token_shards.
TokenLoader` token shards.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, Self, TypeVar

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.shard_source import expand_shard_urls, iter_shard_samples, log_bad_shard

log = logging.getLogger(__name__)


@dataclass
class LoaderConfig:
    shards: str | list[str] = field(default_factory=list)  # URLs, globs, {a..b} or shard folders
    split: str = "train"  # the split a shard folder contributes
    batch_size: int = 32
    num_workers: int = 2  # DataLoader worker processes; 0 streams in the calling process
    # Raw (undecoded) clips each worker shuffles among; 64x64x16 clips take ~200 KB each.
    shuffle_buffer: int = 256
    shuffle: bool = True  # False: shards and clips in stored order (evaluation)
    seed: int = 0
    drop_last: bool = False  # drop each worker's final, smaller batch
    # Width D of continuous actions; sets the (B, T, D) layout of batches in which no clip has
    # actions. None: such batches get discrete (B, T) int64 zeros.
    action_dim: int | None = None
    pin_memory: bool = False  # page-locked batches for faster host-to-GPU copies

    def for_eval(self, shards: str | list[str], split: str, batch_size: int) -> Self:
        """These options on held-out shards, in stored order, read in the main process."""
        return dataclasses.replace(
            self, shards=shards, split=split, batch_size=batch_size, shuffle=False, num_workers=0
        )

    def validate(self) -> None:
        if not self.shards:
            raise ValueError("loader: no shards given")
        if self.batch_size < 1:
            raise ValueError(f"loader: batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"loader: num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"loader: shuffle_buffer must be >= 1, got {self.shuffle_buffer}")


class _WithActions(Protocol):
    actions: np.ndarray | None  # (T,) int64 or (T, D) float32; None when unknown


@dataclass(frozen=True)
class SampleFormat:
    """How a loader turns raw samples into batches. Module-level functions only: the format is
    pickled into every DataLoader worker."""

    # raw sample (bytes values) -> decoded sample; ValueError / EOFError / OSError when malformed
    decode: Callable[[dict[str, Any]], Any]
    # (decoded samples, their keys, loader config) -> a batch with a pin_memory() method
    collate: Callable[[list[Any], list[str], Any], Any]


BatchT = TypeVar("BatchT")


class _Item(NamedTuple):
    """What a worker sends: a batch, or None once at its end, with its resume bookkeeping."""

    batch: Any
    worker: int  # logical worker id
    consumed: int  # raw samples this worker has taken from its shuffled stream so far
    skipped: dict[str, int]  # this worker's bad_shards / bad_samples so far this epoch


def default_rank_world() -> tuple[int, int]:
    """(rank, world_size) of an initialised accelerate state or torch.distributed, else (0, 1)."""
    from accelerate import PartialState

    if PartialState._shared_state:  # only read it: constructing one would initialise it
        state = PartialState()
        return state.process_index, state.num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def resolve_shards(shards: str | list[str], split: str) -> list[str]:
    specs = [shards] if isinstance(shards, str) else list(shards)
    urls = [url for spec in specs for url in expand_shard_urls(spec, split)]
    dupes = sorted({u for u, n in Counter(urls).items() if n > 1})
    if dupes:
        raise ValueError(f"loader: shards given more than once would repeat clips: {dupes[:5]}")
    return urls


def collate_actions(
    clips: Sequence[_WithActions], keys: list[str], B: int, T: int, action_dim: int | None
) -> torch.Tensor:
    """The clips' actions as (B, T) int64 or (B, T, D) float32, zeros for clips without."""
    known = [(i, c.actions) for i, c in enumerate(clips) if c.actions is not None]
    dim = action_dim
    if dim is None and known and known[0][1].ndim == 2:
        dim = known[0][1].shape[1]
    if dim is None:
        actions = torch.zeros((B, T), dtype=torch.int64)  # (B, T)
    else:
        actions = torch.zeros((B, T, dim), dtype=torch.float32)  # (B, T, D)
    for i, a in known:
        if a.shape != tuple(actions.shape[1:]) or (dim is None and a.dtype.kind not in "iu"):
            raise ValueError(
                f"clip {keys[i]!r} has {a.dtype} actions of shape {a.shape} where this batch "
                f"holds {actions.dtype} {tuple(actions.shape[1:])}; clips of one loader need one "
                "action space"
            )
        actions[i] = torch.from_numpy(a.astype(np.float32 if dim else np.int64, copy=False))
    return actions


@dataclass
class _EpochPlan:
    """Everything a worker needs to stream its part of one epoch (pickled into each worker)."""

    urls: list[str]
    cfg: LoaderConfig
    seed: int
    epoch: int
    rank: int
    world_size: int
    consumed: list[int]  # raw samples already consumed, per logical worker
    rotation: int  # physical worker p plays logical worker (p + rotation) % workers
    sample_format: SampleFormat

    @property
    def workers(self) -> int:
        return max(1, self.cfg.num_workers)

    def shards_of(self, logical: int) -> list[str]:
        order = list(range(len(self.urls)))
        if self.cfg.shuffle:
            random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(order)
        mine = order[self.rank :: self.world_size][logical :: self.workers]
        return [self.urls[i] for i in mine]


class _WorkerStream(IterableDataset):
    def __init__(self, plan: _EpochPlan) -> None:
        self.plan = plan

    def __iter__(self) -> Iterator[_Item]:
        plan, cfg = self.plan, self.plan.cfg
        info = get_worker_info()
        logical = ((info.id if info else 0) + plan.rotation) % plan.workers
        skip = plan.consumed[logical]
        skipped: Counter[str] = Counter()
        rng = random.Random(f"clips:{plan.seed}:{plan.epoch}:{plan.rank}:{logical}")
        pipeline = wds.DataPipeline(
            partial(iter, plan.shards_of(logical)),
            partial(_read_shards, skipped=skipped),
            wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_buffer, rng=rng) if cfg.shuffle else None,
            lambda samples: itertools.islice(samples, skip, None),  # before decoding: cheap
            partial(_batches, plan=plan, logical=logical, consumed=skip, skipped=skipped),
        )
        return iter(pipeline)


def _read_shards(urls: Iterator[str], skipped: Counter[str]) -> Iterator[dict]:
    def on_error(url: str, exn: Exception) -> None:
        log_bad_shard(url, exn)
        skipped["bad_shards"] += 1

    for url in urls:
        yield from iter_shard_samples(url, on_error)


def _batches(
    samples: Iterator[dict], plan: _EpochPlan, logical: int, consumed: int, skipped: Counter[str]
) -> Iterator[_Item]:
    cfg, fmt = plan.cfg, plan.sample_format
    clips: list[Any] = []
    keys: list[str] = []
    for sample in samples:
        consumed += 1
        key = sample.get("__key__", "?")
        try:
            clips.append(fmt.decode(sample))
        except (ValueError, EOFError, OSError) as exn:
            log.warning("skipping malformed sample %s of %s (%s)", key, sample.get("__url__"), exn)
            skipped["bad_samples"] += 1
            continue
        keys.append(key)
        if len(clips) == cfg.batch_size:
            yield _Item(fmt.collate(clips, keys, cfg), logical, consumed, dict(skipped))
            clips, keys = [], []
    if clips and not cfg.drop_last:
        yield _Item(fmt.collate(clips, keys, cfg), logical, consumed, dict(skipped))
    yield _Item(None, logical, consumed, dict(skipped))


def _unchanged(item: Any) -> Any:
    return item


class StreamingLoader(Generic[BatchT]):
    """Iterate for one epoch of batches; iterate again for the next (reshuffled) epoch.

    Breaking out of an epoch and iterating again continues that epoch where it stopped, exactly
    like `load_state_dict(state_dict())` in a new process. Subclasses set `sample_format`.
    """

    sample_format: ClassVar[SampleFormat]

    def __init__(
        self, cfg: LoaderConfig, rank: int | None = None, world_size: int | None = None
    ) -> None:
        cfg.validate()
        if rank is None or world_size is None:
            default_rank, default_world = default_rank_world()
            rank = default_rank if rank is None else rank
            world_size = default_world if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"loader: need 0 <= rank < world_size, got {rank}, {world_size}")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.seed = cfg.seed
        self.urls = resolve_shards(cfg.shards, cfg.split)
        self.workers = max(1, cfg.num_workers)
        consumers = world_size * self.workers
        if len(self.urls) < consumers:
            warnings.warn(
                f"loader: {len(self.urls)} shard(s) for {world_size} process(es) x {self.workers} "
                f"worker(s): {consumers - len(self.urls)} consumer(s) will get no data and sit "
                "idle; write more, smaller shards (--units-per-shard) or use fewer workers",
                stacklevel=2,
            )
        self.epoch = 0
        self._skipped_before: Counter[str] = Counter()  # bad shards/samples of finished epochs
        self._start_epoch()

    def _start_epoch(self) -> None:
        self.batches_yielded = 0
        self._consumed = [0] * self.workers
        self._skipped_now: list[dict[str, int]] = [{} for _ in range(self.workers)]
        self._next_worker = 0

    @property
    def skipped(self) -> dict[str, int]:
        """Corrupt shards and malformed samples met so far ("bad_shards", "bad_samples")."""
        total = Counter(self._skipped_before)
        for worker in self._skipped_now:
            total.update(worker)
        return {k: total.get(k, 0) for k in ("bad_shards", "bad_samples")}

    @property
    def bad_shards(self) -> int:
        return self.skipped["bad_shards"]

    def __iter__(self) -> Iterator[BatchT]:
        plan = _EpochPlan(
            self.urls,
            self.cfg,
            self.seed,
            self.epoch,
            self.rank,
            self.world_size,
            list(self._consumed),
            self._next_worker,
            self.sample_format,
        )
        stream = _WorkerStream(plan)
        items: Iterator[_Item] = iter(stream)
        if self.cfg.num_workers > 0:
            items = iter(
                DataLoader(
                    stream,
                    batch_size=None,  # batches are made (and converted) in the workers
                    num_workers=self.cfg.num_workers,
                    collate_fn=_unchanged,
                    pin_memory=self.cfg.pin_memory,
                )
            )
        for item in items:
            self._consumed[item.worker] = item.consumed
            self._skipped_now[item.worker] = item.skipped
            if item.batch is None:
                continue
            self._next_worker = (item.worker + 1) % self.workers
            self.batches_yielded += 1
            pin = self.cfg.pin_memory and self.cfg.num_workers == 0
            yield item.batch.pin_memory() if pin else item.batch
        self._skipped_before = Counter(self.skipped)
        self.epoch += 1
        self._start_epoch()

    def _layout(self) -> dict[str, Any]:
        # What fixes the sample stream besides (seed, epoch): resuming under a different layout
        # cannot reproduce the uninterrupted run, so it is refused rather than silently wrong.
        c = self.cfg
        return {
            "num_shards": len(self.urls),
            "world_size": self.world_size,
            "num_workers": c.num_workers,
            "batch_size": c.batch_size,
            "shuffle_buffer": c.shuffle_buffer,
            "shuffle": c.shuffle,
            "drop_last": c.drop_last,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: after `load_state_dict` of this, iterating yields exactly the
        batches this loader would have yielded next. Plain JSON-able values."""
        return {
            "epoch": self.epoch,
            "batches_yielded_this_epoch": self.batches_yielded,
            "seed": self.seed,
            "rank": self.rank,
            "worker_samples": list(self._consumed),
            "next_worker": self._next_worker,
            "skipped_before_epoch": dict(self._skipped_before),
            "layout": self._layout(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`. A state saved by another rank (trainers often checkpoint rank 0
        only) gives the epoch and batch count; this rank's per-worker positions are then derived
        assuming every worker delivered full batches in turn, which holds until workers run dry
        near the end of an epoch."""
        if state["layout"] != self._layout():
            raise ValueError(
                f"loader: cannot resume exactly: the state was saved with {state['layout']}, "
                f"this loader has {self._layout()}"
            )
        self.seed, self.epoch = state["seed"], state["epoch"]
        self._start_epoch()
        k = self.batches_yielded = state["batches_yielded_this_epoch"]
        if state["rank"] == self.rank:
            self._skipped_before = Counter(state["skipped_before_epoch"])
            self._consumed = list(state["worker_samples"])
            self._next_worker = state["next_worker"]
        else:
            W, B = self.workers, self.cfg.batch_size
            self._consumed = [(k // W + (w < k % W)) * B for w in range(W)]
            self._next_worker = k % W
