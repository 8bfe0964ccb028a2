"""Stacking one-world states into one batch and taking them apart (`WorldSimulator.step_many`).

Players of the app each hold a state of one world. Stepping them one forward pass each wastes
the CPU on fixed costs (measured on 2 cores with the shipped world: 26 ms for one world, 39 ms
for four). States whose tensors have the same shapes (the same window length and caches) stack
along the batch axis; the stacks of different window lengths then step together too, each
attending over its own cache (`STTransformer.forward_cached_many`), so players whose windows
are at different points of their jumps still share one pass. Each world keeps its own random
generator, so its frames are what it would have made alone.

A state is a tree of dataclasses (the world state, the tokenizer's decoder state) whose leaves
are tensors with the batch first, KV caches with (batch * tokens) rows first, and plain values
that every stacked state must share. `stack` and `unstack` walk that tree; the few fields that
differ per world by nature (frame index, random state) are the engine's to handle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
from torch import Tensor

from worldsim.nn.kv_cache import KVCache

T = TypeVar("T")


def signature(tree: Any, skip: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """What must match for trees to stack: every tensor's shape and dtype, every cache's
    length and capacity, every plain value; fields named in `skip` are left out."""
    if isinstance(tree, Tensor):
        return ("tensor", tuple(tree.shape), tree.dtype)
    if isinstance(tree, KVCache):
        return ("cache", tree.length, tree.capacity, tree.layers)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        parts = [(f.name, signature(getattr(tree, f.name))) for f in _fields(tree, skip)]
        return (type(tree).__name__, *parts)
    return ("value", tree)


def stack(trees: list[T], skip: tuple[str, ...] = ()) -> T:
    """One tree of the worlds of `trees` (equal `signature`s), in order; `skip`ped fields are
    taken from the first tree."""
    first = trees[0]
    if isinstance(first, Tensor):
        return torch.cat(trees)  # type: ignore[arg-type,return-value]
    if isinstance(first, KVCache):
        return KVCache.stack(trees)  # type: ignore[arg-type,return-value]
    if dataclasses.is_dataclass(first) and not isinstance(first, type):
        fields = {f.name: stack([getattr(t, f.name) for t in trees]) for f in _fields(first, skip)}
        return dataclasses.replace(first, **fields)  # type: ignore[type-var]
    return first


def unstack(tree: T, index: int, worlds: int, skip: tuple[str, ...] = ()) -> T:
    """World `index` of a tree of `worlds` stacked worlds, as views of its tensors."""
    if isinstance(tree, Tensor):
        return tree[index : index + 1]  # type: ignore[return-value]
    if isinstance(tree, KVCache):
        rows = tree.layer(0)[0].shape[0] // worlds
        return tree.rows(index * rows, (index + 1) * rows)  # type: ignore[return-value]
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        fields = {
            f.name: unstack(getattr(tree, f.name), index, worlds) for f in _fields(tree, skip)
        }
        return dataclasses.replace(tree, **fields)  # type: ignore[type-var]
    return tree


def groups(keys: list[Any]) -> list[list[int]]:
    """Indices of equal keys, each group in order of first appearance."""
    found: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        found.setdefault(key, []).append(i)
    return list(found.values())


def _fields(tree: Any, skip: tuple[str, ...]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(tree) if f.name not in skip]
