"""Keys held in the browser -> the world's actions."""

from __future__ import annotations

from demo.controls import controls_for
from simulator.world.spec import WorldActionSpace

COINRUN = [
    "LEFT+DOWN",
    "LEFT",
    "LEFT+UP",
    "DOWN",
    "NOOP",
    "UP",
    "RIGHT+DOWN",
    "RIGHT",
    "RIGHT+UP",
    "D",
    "A",
    "W",
    "S",
    "Q",
    "E",
]


def test_directions_compose_into_the_named_actions_of_a_game() -> None:
    controls = controls_for(WorldActionSpace("discrete", 15, COINRUN))
    action = controls.action_for
    assert COINRUN[action("right")] == "RIGHT"
    assert COINRUN[action("left,up")] == "LEFT+UP"
    assert COINRUN[action("up,right")] == "RIGHT+UP"  # order of pressing does not matter
    assert COINRUN[action("left,right,up")] == "UP"  # opposite keys cancel out
    assert action("") is None and action("left,right") is None
    assert COINRUN[controls.idle_action] == "NOOP"
    assert controls.controls[7].keys.startswith("→ / D")


def test_combinations_the_world_lacks_fall_back_to_one_axis() -> None:
    controls = controls_for(WorldActionSpace("discrete", 3, ["noop", "left", "right"]))
    assert controls.action_for("right,up") == 2
    assert controls.action_for("up") is None


def test_digits_pick_latent_actions_and_directions_do_nothing() -> None:
    controls = controls_for(WorldActionSpace("latent", 8))
    assert controls.action_for("1") == 0 and controls.action_for("8") == 7
    assert controls.action_for("9") is None  # beyond the 8 actions
    assert controls.action_for("3,5") == 4  # the newest digit wins
    assert controls.action_for("left") is None
    assert [c.label for c in controls.controls[:2]] == ["latent 0", "latent 1"]


def test_driving_keys_ramp_the_controls_and_let_them_ease_back() -> None:
    from demo.controls import wheel_for

    car = WorldActionSpace(
        "continuous", 3, ["steer", "gas", "brake"], low=[-1, 0, 0], high=[1, 1, 1]
    )
    wheel = wheel_for(car)
    controls = wheel.rest
    assert controls == [0.0, 0.0, 0.0]
    path = []
    for _ in range(5):
        controls = wheel.ramp(controls, "left,up")
        path.append(controls)
    assert [c[0] for c in path] == [-0.5, -1.0, -1.0, -1.0, -1.0]  # 4 frames end to end
    assert [c[1] for c in path] == [0.25, 0.5, 0.75, 1.0, 1.0]  # the gas pedal goes down
    released = wheel.ramp(controls, "")
    assert released[0] == -0.5 and released[1] == 0.75  # back toward rest, a step a frame
    assert wheel.ramp([0.3, 0.0, 0.0], "left,right")[0] == 0.0  # opposite keys cancel
    assert wheel.ramp([0.0, 0.0, 0.0], "down")[2] == 0.25  # the brake
    assert ("← / A", "steer toward -1") in wheel.legend()
