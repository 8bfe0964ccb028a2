"""The two kinds of tokenizer a world can render with, loaded from a folder by the class name
its config.json records.

`VideoTokenizer` (tokenizer/model.py) describes every frame by a grid of tokens;
`DeltaTokenizer` (tokenizer/delta.py) renders each frame from the previous ones plus a few
tokens of change. Both give tokens (B, T, g, g) with `encode`, start a stream with `start` and
render the next frame with `decode_step`, so the dynamics model, token shards and the engine take
either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizer.delta import DeltaTokenizer
from tokenizer.model import VideoTokenizer

AnyTokenizer = VideoTokenizer | DeltaTokenizer

TOKENIZERS: dict[str, type[VideoTokenizer] | type[DeltaTokenizer]] = {
    "VideoTokenizer": VideoTokenizer,
    "DeltaTokenizer": DeltaTokenizer,
}


def load_tokenizer(path: str | os.PathLike[str]) -> AnyTokenizer:
    """The tokenizer saved in `path` (a `save_pretrained` folder), whichever kind it is."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no tokenizer checkpoint in {path}: config.json missing")
    try:
        name = json.loads(config_file.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"corrupt config file {config_file}: {err}") from err
    if name not in TOKENIZERS:
        raise ValueError(f"{path} holds a {name!r} checkpoint, not one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[name].from_pretrained(path)
