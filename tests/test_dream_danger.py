"""benchmarks/dream_danger.py: its fireball-pixel count on frames with known answers."""

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location(
    "dream_danger", Path(__file__).parents[1] / "benchmarks" / "dream_danger.py"
)
danger = importlib.util.module_from_spec(spec)
spec.loader.exec_module(danger)


def test_danger_pixels_counts_bright_warm_pixels_only():
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    frames[:] = (81, 79, 78)  # floor and ceiling grey
    frames[:, 30:34] = (133, 109, 87)  # the brown wall, at its brightest
    frames[1, 31, 10:13] = (255, 255, 207)  # a near fireball: three white-yellow pixels
    frames[1, 32, 40] = (176, 161, 83)  # a far one's dimmer pixel
    frames[2] = (200, 40, 40)  # a damage flash: everything red, nothing bright
    np.testing.assert_array_equal(danger.danger_pixels(frames), [0, 4, 0])


def test_hold_policy_holds_each_action_one_to_ten_frames():
    policy = danger.HoldPolicy(4, seed=0)
    actions = np.stack([policy(None)[:, 0] for _ in range(200)])  # (T, 4)
    assert np.all(np.abs(actions) <= 1)
    for col in actions.T:
        changes = np.flatnonzero(np.diff(col)) + 1
        runs = np.diff(np.concatenate([[0], changes, [len(col)]]))
        assert runs[:-1].max() <= 10 and len(runs) > 200 / 10
