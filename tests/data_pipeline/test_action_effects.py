"""Action effects measured by playing CoinRun: keys the game ignores merge, distinct moves don't."""

from __future__ import annotations

import json

import pytest

from data_pipeline.action_effects import measure_action_effects


def test_coinrun_ids_collapse_to_the_keys_it_reads() -> None:
    effects = measure_action_effects("procgen:coinrun", levels=2, probes_per_level=3)
    classes = effects.class_of()
    left, left_down, right, noop, up, letter_d = 1, 0, 7, 4, 5, 9
    assert classes[left] == classes[left_down]  # DOWN does nothing in CoinRun
    assert classes[noop] == classes[letter_d]  # nor do the letter keys
    assert len({classes[left], classes[right], classes[noop], classes[up]}) == 4
    assert effects.names[classes[noop]] == "NOOP" and effects.names[classes[left]] == "LEFT"
    assert sorted(a for g in effects.groups for a in g) == list(range(15))
    assert effects.probes == 6 and json.loads(effects.to_json())["groups"] == effects.groups
    assert "15 action ids act as" in effects.render()


def test_only_games_with_saved_states_are_measured() -> None:
    with pytest.raises(ValueError, match="measured for procgen games"):
        measure_action_effects("atari:Breakout")
