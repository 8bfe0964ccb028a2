"""What the page shows after a player event (`View`), and the frame as HTML: Gradio's
components carry it as an <img> with a PNG data URI; the frame channel (demo/frames.py) carries
a held key's frames as raw pixels instead."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import numpy as np

from worldsim.io.media import png_bytes


@dataclass
class View:
    """What the page shows after an event."""

    frame_HWC: np.ndarray  # the newest frame, uint8 RGB
    index: int  # its index in the session
    engine_ms: float | None  # the engine's time for it (None: not stepped, e.g. a start)
    status: str
    controls: list[float] | None = None  # a continuous world's control values (the sliders)

    @property
    def frame_html(self) -> str:
        """The frame as a Gradio update carries it to the page's screen (play.js): an <img>
        with a PNG data URI, its status line, and the engine's time for it (`data-ms`, for
        the page's rate readout)."""
        ms = "" if self.engine_ms is None else f' data-ms="{self.engine_ms:.0f}"'
        return (
            f'<img id="ws-frame-img" data-frame="{self.index}"{ms} '
            f'data-status="{html.escape(self.status)}" alt="world frame {self.index}" '
            f'src="{data_uri(self.frame_HWC)}">'
        )


def data_uri(frame_HWC: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(frame_HWC)).decode()
