"""Driving episodes as a source: Gymnasium's CarRacing-v3 with a driver that follows the track.

`gym:CarRacing-v3` records one episode per track seed (every reset draws a new random track, so
seeds keep the training and held-out tracks disjoint). Actions are continuous, float32 (T, 3):
steer in [-1, 1] (-1 is full left), gas and brake in [0, 1]. Each frame's reward and whether the
episode ended after its action are recorded too (`Clip.rewards`, `Clip.ends`), for a later
reward head.

A random policy spins on the grass, so `TrackDriver` drives: it steers toward the track a
speed-dependent distance ahead, holds a target speed that changes every few seconds (gas below
it, brake above it and into sharp curves), adds steering noise, and now and then swerves off
the road for a second and steers back. The clips thus show steering both ways, accelerating,
braking, leaving the road and returning. `drive_stats` summarises what was recorded.

The environment is the optional extra `driving` (`pip install -e ".[driving]"`: Box2D and
pygame-ce wheels), imported only when a driving source is used.

References: Ha & Schmidhuber 2018, "World Models" (CarRacing as a world-model benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CAR_RACING = "CarRacing-v3"
CAR_RACING_HZ = 50.0  # the env's physics and render rate (FPS in gymnasium's car_racing.py)
ZOOM_STEPS = 50  # the camera zooms in over the first second: not recorded
ACTION_NAMES = ("steer", "gas", "brake")
LICENSE = "MIT (Farama Gymnasium CarRacing-v3, Box2D)"
POLICY = "track-following driver: varied target speed, braking into curves, steering noise, swerves"
HUD_ROWS = 12  # the bottom rows of a 96x96 frame: speed, ABS, steering and gyro indicators
EXTRA_HINT = 'CarRacing needs the driving extra: pip install -e ".[driving]" (gymnasium[box2d])'


@dataclass
class DriverStyle:
    """The driver's habits (units: Box2D speed, about km/h / 3.6 in the env's own speedometer)."""

    speed_range: tuple[float, float] = (15.0, 55.0)  # target speed drawn anew every segment
    segment_steps: tuple[int, int] = (40, 150)  # how long a target speed is held
    steer_gain: float = 2.0  # steer per radian of heading error
    steer_noise: float = 0.1  # std of the noise added to every steer
    excursion_rate: float = 1 / 150  # chance per step of swerving off the road
    excursion_steps: tuple[int, int] = (6, 20)  # how long a swerve lasts
    grass_speed: float = 15.0  # off the road the driver slows to this and steers back
    curve_slowdown: float = 30.0  # target speed lost per radian of curve ahead
    min_speed: float = 10.0  # never slower on purpose (a stopped car teaches little)


class TrackDriver:
    """Steers toward the track ahead with varied speed, braking into curves, noise and
    excursions (see the module docstring). Deterministic for its RNG."""

    def __init__(self, rng: np.random.Generator, style: DriverStyle | None = None) -> None:
        self.rng, self.style = rng, style or DriverStyle()
        self.target_speed, self.segment_left = 0.0, 0
        self.swerve, self.swerve_left = 0.0, 0

    def act(self, env: Any) -> np.ndarray:
        s, car = self.style, env.car
        position = np.asarray(car.hull.position, dtype=np.float64)
        speed = float(np.linalg.norm(car.hull.linearVelocity))
        track = np.asarray(env.track, dtype=np.float64)[:, 2:4]
        nearest = int(np.argmin(((track - position) ** 2).sum(axis=1)))
        ahead = track[(nearest + 6 + int(speed / 15)) % len(track)]
        forward = np.asarray(car.hull.GetWorldVector((0, 1)), dtype=np.float64)
        error = _wrap(_angle(ahead - position) - _angle(forward))
        steer = -s.steer_gain * error + self.rng.normal(0, s.steer_noise)
        steer += self._swerve()
        curve = s.curve_slowdown * _curve(track, nearest)
        target = max(self._target_speed() - curve, s.min_speed)
        if not _on_road(env) and self.swerve_left <= 0:
            target = min(target, s.grass_speed)
        gas = np.clip((target - speed) / 10, 0, 1)
        brake = np.clip((speed - target - 5) / 20, 0, 0.8)
        return np.array([np.clip(steer, -1, 1), gas, brake], dtype=np.float32)

    def _target_speed(self) -> float:
        if self.segment_left <= 0:
            self.target_speed = float(self.rng.uniform(*self.style.speed_range))
            self.segment_left = int(self.rng.integers(*self.style.segment_steps))
        self.segment_left -= 1
        return self.target_speed

    def _swerve(self) -> float:
        if self.swerve_left <= 0 and self.rng.random() < self.style.excursion_rate:
            self.swerve = float(self.rng.choice([-1, 1]) * self.rng.uniform(0.6, 1.0))
            self.swerve_left = int(self.rng.integers(*self.style.excursion_steps))
        if self.swerve_left <= 0:
            return 0.0
        self.swerve_left -= 1
        return self.swerve


@dataclass
class Drive:
    """One recorded episode: frames (T, H, W, 3) uint8 as the env renders them, actions (T, 3)
    float32 (`actions[t]` leads to frame t+1), rewards (T,) float32 (the reward for
    actions[t]), ends (T,) bool (the episode ended after actions[t]) and on_road (T,) bool
    (a wheel on the track at frame t)."""

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    ends: np.ndarray
    on_road: np.ndarray


def record_drive(track_seed: int, max_frames: int, frame_skip: int, seed: int) -> Drive:
    """Drive one track: up to `max_frames` frames, each after `frame_skip` env steps of the
    same action (their rewards summed)."""
    env = make_env()
    try:
        env.reset(seed=track_seed)
        car_env = env.unwrapped
        for _ in range(ZOOM_STEPS):
            frame, *_ = env.step(np.zeros(3, dtype=np.float32))
        driver = TrackDriver(np.random.default_rng([seed % 2**64, track_seed]))
        frames, actions, rewards, ends, on_road = [frame], [], [], [], [_on_road(car_env)]
        while True:
            action = driver.act(car_env)
            actions.append(action)
            if len(frames) == max_frames:
                rewards.append(0.0)  # the next action is not applied
                ends.append(False)
                break
            total, ended = 0.0, False
            for _ in range(frame_skip):
                frame, reward, terminated, truncated, _ = env.step(action)
                total, ended = total + float(reward), terminated or truncated
                if ended:
                    break
            rewards.append(total)
            ends.append(ended)
            if ended:
                break
            frames.append(frame)
            on_road.append(_on_road(car_env))
    finally:
        env.close()
    return Drive(
        np.stack(frames),
        np.stack(actions).astype(np.float32),
        np.asarray(rewards, dtype=np.float32),
        np.asarray(ends, dtype=bool),
        np.asarray(on_road, dtype=bool),
    )


def without_hud(frame_HWC: np.ndarray) -> np.ndarray:
    """The view above the indicator bar, as a centred square (84x84 of a 96x96 frame). The bar
    draws the speed and the steering wheel: kept, it would let a model or an inverse-dynamics
    score read the action off the screen instead of from the road's motion."""
    h, w = frame_HWC.shape[:2]
    side = h - HUD_ROWS * h // 96
    left = (w - side) // 2
    return frame_HWC[:side, left : left + side]


def make_env() -> Any:
    try:
        import gymnasium as gym

        return gym.make(CAR_RACING, render_mode="rgb_array", continuous=True)
    except (ImportError, gym.error.DependencyNotInstalled) as err:
        raise ImportError(EXTRA_HINT) from err


def _on_road(car_env: Any) -> bool:
    return any(len(wheel.tiles) > 0 for wheel in car_env.car.wheels)


def _angle(vector: np.ndarray) -> float:
    return math.atan2(float(vector[1]), float(vector[0]))


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def _curve(track: np.ndarray, index: int, span: int = 15) -> float:
    """How sharply the track turns over the next `span` points (radians, absolute)."""
    n = len(track)
    a, b, c = track[index % n], track[(index + span // 2) % n], track[(index + span) % n]
    return abs(_wrap(_angle(c - b) - _angle(b - a)))
