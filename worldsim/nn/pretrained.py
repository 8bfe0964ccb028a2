"""The save/load convention every worldsim model shares (tokenizer, latent actions, dynamics)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Self

from diffusers import ConfigMixin, ModelMixin
from safetensors import SafetensorError


class PretrainedModel(ModelMixin, ConfigMixin):
    """save_pretrained / from_pretrained convention of every worldsim model.

    Why diffusers' ModelMixin + ConfigMixin: the weights go to safetensors and the config to JSON,
    so loading never unpickles; the accelerate training driver already exports through
    `save_pretrained`; and the format is the one the diffusers/Hub tooling reads. Loading adds
    what diffusers lacks: a check that the folder holds this model class, and errors that name
    the folder when a file is missing or corrupt.
    """

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> Self:
        folder = Path(pretrained_model_name_or_path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"no {cls.__name__} checkpoint in {folder}: config.json missing"
            )
        try:
            saved = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"corrupt config file {config_file}: {err}") from err
        found = saved.get("_class_name") if isinstance(saved, dict) else None
        if found != cls.__name__:
            raise ValueError(f"{folder} holds a {found!r} checkpoint, not a {cls.__name__}")
        kwargs.setdefault("use_safetensors", True)  # never fall back to a pickled .bin
        try:
            return super().from_pretrained(folder, **kwargs)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            raise ValueError(f"cannot load {cls.__name__} from {folder}: {err}") from err
