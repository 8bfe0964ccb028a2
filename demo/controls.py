"""How a player's keys become a world's actions, and the legend that says so.

The browser sends the keys held down as tokens: directions ("left", "right", "up", "down",
from the arrow keys, WASD and Space for up) and digits ("1".."9", "0"). A world whose actions
are named the way a game's are (LEFT, RIGHT+UP, NOOP, ...) is steered by direction keys: the
held directions are composed into a name ("RIGHT+UP") and fall back to one axis when the
world has no such combination. Digits pick actions by position (1 = id 0): the way to steer
latent actions, which have no names, and any action no direction reaches.
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
