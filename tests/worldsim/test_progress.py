"""Progress shows on a terminal as a bar and in a log as plain lines."""

from __future__ import annotations

import io

from worldsim.io.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_plain_line_a_report() -> None:
    log = io.StringIO()
    for _ in progress(range(3), desc="eval world", unit="batch", every=0.0, stream=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) >= 4  # the start, each batch, the end
    assert lines[0].startswith("eval world:   0%") and "3/3" in lines[-1]


def test_a_log_gets_a_line_a_minute_not_one_a_step() -> None:
    log = io.StringIO()
    for _ in progress(range(1000), desc="tokenize", stream=log):
        pass
    assert len(log.getvalue().splitlines()) <= 3  # the start and the end, fast work


def test_a_terminal_gets_the_bar() -> None:
    terminal = Terminal()
    for _ in progress(range(3), desc="eval", stream=terminal, mininterval=0):
        pass
    assert "\r" in terminal.getvalue() and "|" in terminal.getvalue()
