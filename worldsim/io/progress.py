"""Progress of long work that shows in a terminal and in a log alike.

tqdm draws a bar on a terminal by rewriting one line with carriage returns; written to a file or
a pipe those pile up into one unreadable line, and tqdm's `disable=None` (off without a terminal)
shows nothing at all, so a 30-minute evaluation run under `nohup` said nothing until it ended.
`progress` keeps the bar on a terminal and otherwise writes one plain line every `every` seconds
(and at the start and the end).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_EVERY_S = 60.0  # seconds between lines in a log: a 30-minute job writes about 30


class _Lines:
    """A stream for tqdm that turns each redraw (a carriage return) into a line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str = "",
    unit: str = "it",
    every: float = LOG_EVERY_S,
    stream: TextIO | None = None,
    **options: Any,
) -> tqdm:
    """A tqdm bar over `iterable` (or updated by hand) on a terminal; on any other `stream`
    (default stderr) a line every `every` seconds. `options` are tqdm's (total, initial, ...)."""
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        return tqdm(iterable, desc=desc, unit=unit, file=stream, **options)
    known = options.get("total") is not None or hasattr(iterable, "__len__")
    line = "{l_bar}{r_bar}" if known else "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]"
    return tqdm(
        iterable, desc=desc, unit=unit, file=_Lines(stream), mininterval=every,
        maxinterval=every, bar_format=line, **options,
    )  # fmt: skip
