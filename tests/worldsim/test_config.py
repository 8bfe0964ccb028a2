"""worldsim.config: YAML base + preset + overrides, strict keys, flags from dataclasses."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import configs
from worldsim.config import (
    add_dataclass_flags,
    flags_to_dict,
    from_dict,
    load_config,
    load_yaml_layers,
    parse_overrides,
    preset_path,
)


@dataclass
class Inner:
    width: int = 8
    kind: str = "fsq"


@dataclass
class Outer:
    lr: float = 1e-3
    name: str | None = None
    inner: Inner = field(default_factory=Inner)


CONFIGS = Path(configs.__file__).parent


def test_overrides_parse_yaml_scalars_and_nest() -> None:
    got = parse_overrides(["lr=0.5", "inner.width=64", "name=null", "inner.kind=vq"])
    assert got == {"lr": 0.5, "inner": {"width": 64, "kind": "vq"}, "name": None}


def test_numbers_are_coerced_to_the_field_type() -> None:
    # YAML 1.1 reads 3e-4 as a string; a float field must still get a float.
    cfg = from_dict(Outer, parse_overrides(["lr=3e-4"]))
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float)
    assert from_dict(Outer, {"lr": 1}).lr == 1.0
    with pytest.raises(ValueError, match=r"inner.width.*int"):
        from_dict(Outer, {"inner": {"width": "wide"}})


def test_override_without_equals_is_an_error() -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["lr"])


def test_from_dict_rejects_unknown_keys_naming_them() -> None:
    with pytest.raises(ValueError, match=r"inner.*widht"):
        from_dict(Outer, {"inner": {"widht": 3}})


def test_base_then_preset_then_overrides(tmp_path: Path) -> None:
    group = tmp_path / "model"
    group.mkdir()
    (group / "defaults.yaml").write_text("lr: 0.1\ninner:\n  width: 16\n  kind: vq\n")
    (group / "small.yaml").write_text("inner:\n  width: 4\n")
    assert load_yaml_layers(group / "small.yaml") == {
        "lr": 0.1,
        "inner": {"width": 4, "kind": "vq"},
    }
    cfg = load_config(Outer, "model", str(group / "small.yaml"), ["inner.kind=fsq"])
    assert cfg == Outer(lr=0.1, inner=Inner(width=4, kind="fsq"))


def test_packaged_preset_resolves_and_unknown_lists_available() -> None:
    assert preset_path("data", "coinrun").name == "coinrun.yaml"
    with pytest.raises(FileNotFoundError, match="coinrun"):
        preset_path("data", "no_such_preset")
    with pytest.raises(FileNotFoundError, match="no tokenizer preset named 'defaults'"):
        preset_path("tokenizer", "defaults")  # the shared layer is not a recipe


def test_a_recipe_named_like_a_model_preset_trains_that_preset() -> None:
    """`--config base` trains the `base` model, in every group: names mean one thing."""
    from simulator.evaluation.idm import PRESETS as IDM
    from simulator.models.dynamics_config import PRESETS as DYNAMICS
    from simulator.models.lam_config import PRESETS as LAM
    from tokenizer.config import PRESETS as TOKENIZER

    groups = {"tokenizer": TOKENIZER, "lam": LAM, "dynamics": DYNAMICS, "idm": IDM}
    checked = 0
    for group, presets in groups.items():
        for name in presets:
            path = (
                preset_path(group, name) if (CONFIGS / group / f"{name}.yaml").is_file() else None
            )
            if path is not None:
                assert load_yaml_layers(path)["preset"] == name, (group, name)
                checked += 1
    assert checked >= 10


def test_preset_name_wins_over_a_same_named_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "coinrun").mkdir()  # e.g. the repo's demo/ package next to the `demo` preset
    monkeypatch.chdir(tmp_path)
    assert preset_path("data", "coinrun").parent.name == "data"


def test_non_mapping_yaml_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_yaml_layers(bad)


def test_flags_only_override_what_was_typed() -> None:
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, Outer, skip={"inner"})
    ns = parser.parse_args(["--lr", "0.5"])
    assert flags_to_dict(ns, Outer, skip={"inner"}) == {"lr": 0.5}
