"""How a player's keys become a world's actions, and the legend that says so.

The browser sends the keys held down as tokens: directions ("left", "right", "up", "down",
from the arrow keys, WASD and Space for up) and digits ("1".."9", "0"). A world whose actions
are named the way a game's are (LEFT, RIGHT+UP, NOOP, ...) is steered by direction keys: the
held directions are composed into a name ("RIGHT+UP") and fall back to one axis when the
world has no such combination. Digits pick actions by position (1 = id 0): the way to steer
latent actions, which have no names, and any action no direction reaches.

A world of continuous controls (CarRacing's steer, gas, brake) is driven the way a keyboard
driving game is: `Wheel.ramp` moves each control toward where the held keys push it a little
every frame (hold LEFT: steer goes to -1 over a few frames; release: back to its rest), so the
world is steered by values between the extremes and eases back when the keys let go.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.world.spec import WorldActionSpace

DIRECTIONS = ("left", "right", "up", "down")
DIGITS = "1234567890"  # key "1" is action 0, ..., key "0" is action 9
# Shown in the legend next to each direction (the browser's key map is demo/static/play.js).
DIRECTION_KEYS = {"left": "← / A", "right": "→ / D", "up": "↑ / W / Space", "down": "↓ / S"}


@dataclass(frozen=True)
class Control:
    action: int  # id in the world's action space
    label: str  # the action's name, or "latent k"
    keys: str  # the keys that give it, as shown to the player ("" when only a button does)


@dataclass(frozen=True)
class Controls:
    space: WorldActionSpace
    controls: tuple[Control, ...]  # one per action, in id order
    by_name: dict[str, int]  # upper-case action name -> id

    @property
    def steered_by_directions(self) -> bool:
        return any(name in self.by_name for name in ("LEFT", "RIGHT", "UP"))

    def action_for(self, held: str) -> int | None:
        """The action for the comma-separated key tokens `held`, or None when they mean
        nothing in this world (no key held, or a digit beyond its actions)."""
        tokens = [t for t in (t.strip().lower() for t in held.split(",")) if t]
        digits = [t for t in tokens if t in DIGITS and len(t) == 1]
        if digits:  # the newest digit wins
            action = DIGITS.index(digits[-1])
            return action if action < self.space.n else None
        directions = {t for t in tokens if t in DIRECTIONS}
        if not directions or not self.steered_by_directions:
            return None
        horizontal = _axis(directions, "left", "right")
        vertical = _axis(directions, "up", "down")
        for parts in ((horizontal, vertical), (horizontal, None), (None, vertical)):
            name = "+".join(p.upper() for p in parts if p)
            if name and name in self.by_name:
                return self.by_name[name]
        return None

    @property
    def idle_action(self) -> int | None:
        """The action of a player who presses nothing, where the world names one."""
        return self.by_name.get("NOOP")


@dataclass(frozen=True)
class Wheel:
    """Keys -> continuous controls. Each control has a key pair pushing it to its low and high
    end (or one key pushing it to its high end, as the pedals); unpushed, it returns to rest."""

    space: WorldActionSpace
    # control index -> (key toward low, key toward high); None: no key that way
    keys: dict[int, tuple[str | None, str | None]]
    step: float = 0.25  # change per frame, as a share of the control's range: 4 frames end to end

    @property
    def rest(self) -> list[float]:
        rest = self.space.idle()
        assert isinstance(rest, list)
        return rest

    def ramp(self, current: list[float], held: str) -> list[float]:
        """The controls one frame after `current`, with the keys `held` (comma-separated)."""
        tokens = {t.strip().lower() for t in held.split(",") if t.strip()}
        out = []
        for i, (value, rest) in enumerate(zip(current, self.rest, strict=True)):
            low, high = self.space.low[i], self.space.high[i]
            down, up = self.keys.get(i, (None, None))
            target = rest
            if (down in tokens) != (up in tokens):  # both keys of a pair cancel out
                target = low if down in tokens else high
            delta = self.step * (high - low)
            out.append(value + max(-delta, min(delta, target - value)))
        return out

    def legend(self) -> list[tuple[str, str]]:
        """(keys, what they do) rows for the page."""
        names = self.space.names or [f"control {i}" for i in range(self.space.n)]
        rows = []
        for i, (down, up) in sorted(self.keys.items()):
            for key, end in ((down, self.space.low[i]), (up, self.space.high[i])):
                if key is not None:
                    rows.append((DIRECTION_KEYS[key], f"{names[i]} toward {end:g}"))
        return rows


# Driving: LEFT/RIGHT steer, UP is the gas pedal, DOWN the brake (by control name).
WHEEL_KEYS: dict[str, tuple[str | None, str | None]] = {
    "steer": ("left", "right"),
    "gas": (None, "up"),
    "brake": (None, "down"),
}


def wheel_for(space: WorldActionSpace) -> Wheel:
    """The keys of a continuous world: by control name (steer, gas, brake); otherwise LEFT/RIGHT
    and DOWN/UP move its first two controls."""
    names = [n.lower() for n in space.names]
    if all(n in WHEEL_KEYS for n in names) and names:
        keys = {i: WHEEL_KEYS[n] for i, n in enumerate(names)}
    else:
        pairs: list[tuple[str | None, str | None]] = [("left", "right"), ("down", "up")]
        keys = {i: pair for i, pair in enumerate(pairs[: space.n])}
    return Wheel(space, keys)


def controls_for(space: WorldActionSpace) -> Controls:
    names = [n.upper() for n in space.names] if space.names else []
    by_name = {name: i for i, name in enumerate(names)}
    controls = []
    for action in range(space.n):
        label = names[action] if names else f"{space.type} {action}"
        keys = []
        parts = set(label.lower().split("+"))
        if names and parts <= set(DIRECTIONS):
            keys.append(" + ".join(DIRECTION_KEYS[p] for p in _ordered(parts)))
        if action < len(DIGITS):
            keys.append(DIGITS[action])
        controls.append(Control(action, label, "  or  ".join(keys)))
    return Controls(space, tuple(controls), by_name)


def _axis(held: set[str], negative: str, positive: str) -> str | None:
    """One direction of an axis; both keys of an axis cancel out."""
    if (negative in held) == (positive in held):
        return None
    return negative if negative in held else positive


def _ordered(parts: set[str]) -> list[str]:
    return [d for d in DIRECTIONS if d in parts]
