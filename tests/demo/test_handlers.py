"""The app's handlers without a browser: playing, undo, reproducible seeds, downloads, two
players at once, and every kind of bad upload refused with a message."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import demo.batcher
import demo.uploads
from demo.handlers import PlayHandlers
from demo.uploads import PlayError
from worldsim.io.media import to_uint8_clips, write_video

from .conftest import SETTINGS


def held_step(handlers: PlayHandlers, held: str, session, player: str = "p"):
    """One frame of the stream a held key starts (then the key is let go)."""
    stream = handlers.hold(held, session, SETTINGS, player)
    shown = next(stream)
    stream.close()
    return shown


def test_holding_keys_steps_the_world_and_undo_goes_back(handlers: PlayHandlers) -> None:
    session, view = handlers.start_builtin(0, SETTINGS)
    assert 'data-frame="0"' in view.frame_html and "easy level 7" in view.status
    first = session.frame.copy()
    session, view = held_step(handlers, "right", session)
    assert 'data-frame="1"' in view.frame_html and "RIGHT" in view.status
    assert list(handlers.hold("", session, SETTINGS)) == []  # no key: the world waits
    held_step(handlers, "left,up", session)
    assert [s.action for s in session.steps] == [2, 4]
    session, view = handlers.undo(session)
    session, view = handlers.undo(session)
    assert 'data-frame="0"' in view.frame_html and np.array_equal(session.frame, first)
    with pytest.raises(PlayError, match="nothing to undo"):
        handlers.undo(session)
    with pytest.raises(PlayError, match="pick a start frame first"):
        handlers.step(1, None, SETTINGS)
    with pytest.raises(PlayError, match="action 9 is not one of this world's actions"):
        handlers.step(9, session, SETTINGS)


def test_the_seed_reproduces_a_session_exactly(handlers: PlayHandlers) -> None:
    def play(seed: int) -> np.ndarray:
        session, _ = handlers.start_builtin(1, dataclasses.replace(SETTINGS, seed=seed))
        for held in ["right", "right", "up", "left", "1"]:
            held_step(handlers, held, session)
        handlers.step(2, session, dataclasses.replace(SETTINGS, temperature=0.5, steps=3))
        assert np.array_equal(session.replay(), session.video())
        return session.video()

    assert np.array_equal(play(seed=3), play(seed=3))
    assert not np.array_equal(play(seed=3), play(seed=4))
    session, _ = handlers.start_builtin(1, SETTINGS)
    handlers.step(1, session, SETTINGS)
    restarted, _ = handlers.restart(session, dataclasses.replace(SETTINGS, seed=0))
    assert len(restarted.video()) == 1 and restarted.steps == []


def test_bad_settings_are_refused_by_name(handlers: PlayHandlers) -> None:
    session, _ = handlers.start_builtin(0, SETTINGS)
    with pytest.raises(PlayError, match="steps must be >= 1"):
        handlers.step(1, session, dataclasses.replace(SETTINGS, steps=0))
    with pytest.raises(PlayError, match="must be numbers"):
        handlers.step(1, session, dataclasses.replace(SETTINGS, temperature="hot"))
    with pytest.raises(PlayError, match="seed must be a whole number"):
        handlers.restart(session, dataclasses.replace(SETTINGS, seed=None))
    assert session.steps == []  # nothing happened to the session


def test_two_players_at_once_never_see_each_other(handlers: PlayHandlers) -> None:
    """Interleaved and threaded sessions give exactly what each gives alone."""
    keys = {"a": ["right"] * 6, "b": ["left", "up", "left,up", "1", "left", "right"]}
    seeds = {"a": 1, "b": 2}

    def alone(name: str) -> np.ndarray:
        session, _ = handlers.start_builtin(0, dataclasses.replace(SETTINGS, seed=seeds[name]))
        for held in keys[name]:
            session.step(handlers.controls.action_for(held), handlers.sampling(SETTINGS))
        return session.video()

    expected = {name: alone(name) for name in keys}
    sessions = {
        name: handlers.start_builtin(0, dataclasses.replace(SETTINGS, seed=seeds[name]), name)[0]
        for name in keys
    }
    errors: list[BaseException] = []

    def player(name: str) -> None:
        try:
            stream = handlers.hold(keys[name][0], sessions[name], SETTINGS, name)
            for held in keys[name]:
                handlers.set_keys(held, name)
                next(stream)
                if name == "a":  # one player's errors stay theirs
                    with pytest.raises(PlayError):
                        handlers.step(99, sessions[name], SETTINGS)
        except BaseException as err:  # surfaced below: a thread's assertion is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=player, args=(name,)) for name in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for name in keys:
        assert np.array_equal(sessions[name].video(), expected[name]), name


def test_a_held_key_streams_frames_until_the_keys_change_or_the_player_leaves(handlers) -> None:
    session, _ = handlers.start_builtin(0, SETTINGS, player="p")
    stream = handlers.hold("right", session, SETTINGS, "p")
    assert [next(stream)[1].status.split(" · ")[1] for _ in range(3)] == ["RIGHT"] * 3
    handlers.set_keys("left,up", "p")  # the page says the held keys changed
    assert "LEFT+UP" in next(stream)[1].status
    handlers.set_keys("", "p")  # all released: the stream ends
    assert list(stream) == [] and session.frame_index == 4
    stream = handlers.hold("right", session, SETTINGS, "p")
    next(stream)
    handlers.forget("p")  # the page closed mid-stream: its world is freed, the stream ends
    assert list(stream) == [] and session.closed and len(session.history) == 0
    assert handlers.players == {} and handlers.keys == {}
    other, _ = handlers.start_builtin(0, SETTINGS, player="q")
    replaced, _ = handlers.start_builtin(1, SETTINGS, player="q")  # a new start frees the old
    assert other.closed and not replaced.closed and handlers.players == {"q": replaced}


def test_a_lone_player_s_next_frame_is_made_ahead_and_dropped_if_the_keys_change(
    handlers, monkeypatch
) -> None:
    """While a frame is sent, the next is made under the keys held then: shown if they still
    ask for it, made again under the new keys if not; a player among others gets none made
    ahead. Either way the frames are the session's own (its record replays them)."""
    asked: list[list] = []  # the actions of every engine call, in order
    step_many = handlers.engine.step_many

    def counted(states, actions, sampling=None):
        asked.append(list(actions))
        return step_many(states, actions, sampling)

    def calls(n: int) -> list[list]:  # the calls once n were made (steps ahead run on a thread)
        deadline = time.perf_counter() + 10
        while len(asked) < n and time.perf_counter() < deadline:
            time.sleep(0.005)
        return asked

    monkeypatch.setattr(handlers.engine, "step_many", counted)
    right, left = (handlers.controls.action_for(k) for k in ("right", "left"))
    session, _ = handlers.start_builtin(0, SETTINGS, player="p")
    stream = handlers.hold("right", session, SETTINGS, "p")
    next(stream)
    assert calls(2) == [[right], [right]]  # frame 1, and frame 2 begun ahead
    next(stream)
    assert calls(3) == [[right]] * 3  # frame 2 was the one made ahead; frame 3 begun
    handlers.set_keys("left", "p")
    next(stream)
    assert calls(5) == [[right]] * 3 + [[left], [left]]  # frame 3 made again under LEFT
    handlers.set_keys("", "p")
    assert list(stream) == [] and len(asked) == 5
    assert [s.action for s in session.steps] == [right, right, left]
    assert np.array_equal(session.replay(), session.video())
    other, _ = handlers.start_builtin(1, SETTINGS, player="q")
    handlers.step(right, other, SETTINGS)  # another player is stepping: nothing made ahead
    asked.clear()
    stream = handlers.hold("right", session, SETTINGS, "p")
    next(stream)
    stream.close()  # waits for a step made ahead, were there one
    assert asked == [[right]]


def test_a_late_stream_start_never_undoes_a_newer_key_change(handlers: PlayHandlers) -> None:
    session, _ = handlers.start_builtin(0, SETTINGS, player="p")
    handlers.set_keys("right,up#2", "p")  # sent outside the queue, so it arrived first
    stream = handlers.hold("right#1", session, SETTINGS, "p")  # the stream's own, older keys
    assert " · RIGHT+UP · " in next(stream)[1].status
    handlers.set_keys("#3", "p")
    assert list(stream) == []


def test_players_who_step_at_once_share_one_engine_call(handlers: PlayHandlers) -> None:
    """Steps waiting while the engine is busy run together, each world as it would alone."""
    sessions = [handlers.start_builtin(i % 2, SETTINGS, player=str(i))[0] for i in range(3)]
    expected = [s.engine.step(s.state, [2], handlers.sampling(SETTINGS))[0] for s in sessions]
    threads = [threading.Thread(target=handlers.step, args=(2, s, SETTINGS)) for s in sessions]
    with handlers.engine_lock:  # busy: all three requests queue up
        for thread in threads:
            thread.start()
        while len(handlers.batcher._waiting) < 3:
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join()
    assert [s.last_batch for s in sessions] == [3, 3, 3]
    for session, frame in zip(sessions, expected, strict=True):
        assert np.array_equal(session.frame, to_uint8_clips(frame[0]))
    assert "3 players at once" in handlers.view(sessions[0]).status


def test_a_step_waits_for_the_other_players_stepping_lately(handlers, monkeypatch) -> None:
    """Two players stepping by turns would never share a call: the leader waits for the
    player who stepped lately (here up to a generous 5 s) and both step together."""
    a, b = (handlers.start_builtin(i, SETTINGS, player=str(i))[0] for i in range(2))
    handlers.step(2, a, SETTINGS)
    handlers.step(2, b, SETTINGS)  # both stepping lately (b waited GATHER_S for a in vain)
    monkeypatch.setattr(demo.batcher, "GATHER_S", 5.0)
    leader = threading.Thread(target=handlers.step, args=(2, a, SETTINGS))
    leader.start()
    while not handlers.batcher._waiting and leader.is_alive():  # a asks first, waits for b
        threading.Event().wait(0.01)
    handlers.step(2, b, SETTINGS)
    leader.join()
    assert (a.last_batch, b.last_batch) == (2, 2)
    monkeypatch.setattr(demo.batcher, "GATHER_S", 0.004)
    stream = handlers.hold("right", b, SETTINGS, "1")
    next(stream)
    handlers.set_keys("", "1")
    assert list(stream) == []  # b let go: a steps alone at once, without waiting 5 s for b
    monkeypatch.setattr(demo.batcher, "GATHER_S", 5.0)
    began = time.perf_counter()
    handlers.step(2, a, SETTINGS)
    assert a.last_batch == 1 and time.perf_counter() - began < 2.5


def test_downloads_hold_every_frame_as_mp4_and_gif(handlers: PlayHandlers) -> None:
    session, _ = handlers.start_builtin(0, SETTINGS)
    for _ in range(4):
        handlers.step(2, session, SETTINGS)
    mp4 = handlers.download(session, ".mp4", "abc/../x")
    assert mp4.parent == handlers.downloads and mp4.name == "worldsim-abcx.mp4"
    with av.open(str(mp4)) as video:
        assert sum(1 for _ in video.decode(video=0)) == 5
    with Image.open(handlers.download(session, ".gif", "abc")) as gif:
        assert gif.n_frames == 5 and gif.size == (64, 64)  # 16x16 enlarged 4x
    with pytest.raises(PlayError, match="downloads are .mp4 or .gif"):
        handlers.download(session, ".exe", "abc")


def test_the_legend_previews_each_action_without_moving_the_world(handlers) -> None:
    legend = handlers.legend(None, SETTINGS)
    assert "RIGHT+UP" in legend and "<img" not in legend
    session, _ = handlers.start_builtin(0, SETTINGS)
    assert "<img" not in handlers.legend(session, SETTINGS, previews_wanted=False)
    legend = handlers.legend(session, SETTINGS)
    assert legend.count('class="ws-thumb"') == len(handlers.preview_actions()) == 6
    assert session.steps == [] and session.frame_index == 0
    assert 'data-frame="0"' in legend  # the page marks it stale once the world moves on
    # Buttons and previews in id order, the order of the digit keys (NOOP is 1 here).
    assert handlers.preview_actions() == [0, 1, 2, 3, 4, 5]


def test_the_header_and_status_say_what_the_keys_do_without_repeats(handlers) -> None:
    header = handlers.header()
    assert "digits 1-6" in header and "ids 0" not in header
    assert "(NOOP, LEFT, RIGHT, UP, LEFT+UP, RIGHT+UP)" in header
    session, view = handlers.start_builtin(0, SETTINGS)
    assert view.status == "frame 0 · from easy level 7 · seed 0"
    _, view = held_step(handlers, "right", session)
    assert 'data-ms="' in view.frame_html  # the engine's time, for the page's readout
    assert view.status.startswith("frame 1 · RIGHT · ") and view.status.count("from ") == 1


def save_image(path: Path, width: int, height: int) -> Path:
    Image.fromarray(np.full((height, width, 3), 120, dtype=np.uint8)).save(path)
    return path


def test_uploads_start_a_world_or_are_refused_with_a_message(handlers, tmp_path, monkeypatch):
    with pytest.warns(UserWarning, match="centre-cropped"):
        session, view = handlers.start_upload(str(save_image(tmp_path / "a.png", 48, 32)), SETTINGS)
    assert "upload a.png" in view.status
    clip = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    session, _ = handlers.start_upload(str(write_video(clip, tmp_path / "c.mp4")), SETTINGS)
    assert len(session.start.frames) == 1  # no actions known: the clip's last frame starts it
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "fake.png").write_text("not a picture")
    (tmp_path / "notes.txt").write_text("hello")
    bad = {
        None: "no file was uploaded",
        tmp_path / "empty.mp4": "empty.mp4 is empty",
        tmp_path / "noise.mp4": "noise.mp4 could not be read",
        tmp_path / "fake.png": "fake.png is not an image this app can read",
        tmp_path / "notes.txt": "notes.txt is not an image or a video this app reads",
        save_image(tmp_path / "strip.png", 200, 20): "strip.png is 200x20: too far from square",
        save_image(tmp_path / "dot.png", 1, 1): "dot.png is 1x1 pixels: too small",
        tmp_path / "gone.png": "gone.png: no such file",
    }
    for path, message in bad.items():
        with pytest.raises(PlayError, match=message) as refused:
            handlers.start_upload(None if path is None else str(path), SETTINGS)
        # the player's file by its name: no server paths, no errno
        assert str(tmp_path) not in str(refused.value) and "Errno" not in str(refused.value)
    monkeypatch.setattr(demo.uploads, "MAX_IMAGE_PIXELS", 40 * 40)
    with pytest.raises(PlayError, match="64x64 pixels; the limit is 1,600 pixels"):
        handlers.start_upload(str(save_image(tmp_path / "big.png", 64, 64)), SETTINGS)
    monkeypatch.setattr(demo.uploads, "MAX_UPLOAD_MB", 0.00001)
    with pytest.raises(PlayError, match="the limit is 1e-05 MB"):
        handlers.start_upload(str(save_image(tmp_path / "b.png", 16, 16)), SETTINGS)
    with pytest.raises(PlayError, match="not one of the shard clips offered"):
        handlers.start_shard_clip("/etc/passwd#x", SETTINGS)


def test_key_guidance_is_a_setting_only_for_a_world_trained_for_it(handlers: PlayHandlers) -> None:
    base = handlers.default_sampling
    assert SETTINGS.sampling(base).guidance == base.guidance  # None keeps the world's own
    assert dataclasses.replace(SETTINGS, guidance=2.5).sampling(base).guidance == 2.5
    with pytest.raises(PlayError, match="must be numbers"):
        dataclasses.replace(SETTINGS, guidance="strong").sampling(base)
    session, _ = handlers.start_builtin(0, SETTINGS)
    assert not handlers.guidable  # the tiny world was trained without action_dropout
    with pytest.raises(PlayError, match="not trained for key guidance"):
        handlers.step(1, session, dataclasses.replace(SETTINGS, guidance=2.0))
    assert session.steps == []


def test_a_driven_world_ramps_its_controls_and_eases_back_after_the_keys(car) -> None:
    session, view = car.start_builtin(0, SETTINGS, player="d")
    assert view.controls == [0.0, 0.0, 0.0] and "steer" in car.header()
    assert car.preview_actions() == [] and "steer toward -1" in car.legend(session, SETTINGS)
    stream = car.hold("right,up", session, SETTINGS, "d")
    shown = [next(stream)[1] for _ in range(4)]
    assert [v.controls[0] for v in shown] == [0.5, 1.0, 1.0, 1.0]
    assert "steer +1.00 gas +1.00 brake +0.00" in shown[-1].status
    car.set_keys("", "d")  # let go: the car keeps going while the controls ease back
    eased = [v.controls for _, v in stream]
    assert eased[-1] == [0.0, 0.0, 0.0] and len(eased) == 4
    assert [s.action for s in session.steps][-1] == [0.0, 0.0, 0.0]
    _, view = car.set_controls([-0.5, 0.2, 0.0], session)  # the sliders
    assert view.controls == [-0.5, 0.2, 0.0]
    _, view = car.step(list(session.controls), session, SETTINGS)
    assert "steer -0.50 gas +0.20" in view.status
    with pytest.raises(PlayError, match="do not fit this world"):
        car.set_controls([0.0, 2.0, 0.0], session)
    assert np.array_equal(session.replay(), session.video())
