"""benchmarks/reward_fidelity.py: M's predicted rewards against the game's, step by step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_world_model

from dreamgym import dream_core as dc

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reward_fidelity.py"
spec = importlib.util.spec_from_file_location("reward_fidelity", SCRIPT)
reward_fidelity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reward_fidelity)


def episode(steps: int, seed: int = 0) -> dict:
    """A made-up CarRacing episode: random frames, actions in range, rewards."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (steps + 1, 64, 64, 3), dtype=np.uint8)
    actions = rng.uniform([-1, 0, 0], [1, 1, 1], (steps, 3)).astype(np.float32)
    rewards = rng.normal(0, 1, steps).tolist()
    return {"frames": frames, "actions": actions, "rewards": rewards, "real": sum(rewards)}


def test_one_step_dreams_from_real_states_pay_what_m_predicts_along_the_real_episode(
    monkeypatch,
):
    """With z at V's mean, 1-step dreams from every real state sum to the teacher-forced
    prediction: the dreams start at the right state and replay the right action."""
    wm = tiny_world_model("car_racing", done_bias=-50.0)  # M never ends a dream
    ep = episode(12)
    monkeypatch.setattr(dc, "posterior_sample", lambda mu, logvar, g: mu.clone())
    pred, real = reward_fidelity.from_real_states(wm, ep, horizon=1, n=3, tau=1.0, seed=0)
    assert len(pred) == 12 and real == pytest.approx(ep["rewards"])
    assert pred.sum() == pytest.approx(reward_fidelity.teacher_forced(wm, ep), rel=1e-5)


def test_segments_cover_whole_horizons_and_sum_the_games_rewards():
    wm = tiny_world_model("car_racing", done_bias=-50.0)
    ep = episode(11)
    torch.manual_seed(0)
    pred, real = reward_fidelity.from_real_states(wm, ep, horizon=4, n=2, tau=1.0, seed=0)
    assert len(pred) == len(real) == 2  # steps 0-3 and 4-7; 8-10 are not a whole segment
    assert real == pytest.approx([sum(ep["rewards"][0:4]), sum(ep["rewards"][4:8])])
    again, _ = reward_fidelity.from_real_states(wm, ep, horizon=4, n=2, tau=1.0, seed=0)
    assert np.array_equal(pred, again)  # the seed fixes the dreams
    none, _ = reward_fidelity.from_real_states(wm, ep, horizon=12, n=2, tau=1.0, seed=0)
    assert len(none) == 0
