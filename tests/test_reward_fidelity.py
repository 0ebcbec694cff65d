"""benchmarks/reward_fidelity.py: M's predicted rewards against the game's, step by step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_world_model

from dreamgym import dream_core as dc
from dreamgym.vae import frames_to_tensor

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
    """With z at V's mean, 1-step dreams from every real state pay, step by step, what M
    predicts reading the real episode: each starts at its step's state and action."""
    wm = tiny_world_model("car_racing", done_bias=-50.0)  # M never ends a dream
    ep = episode(12)
    monkeypatch.setattr(dc, "posterior_sample", lambda mu, logvar, g: mu.clone())
    pred, real = reward_fidelity.from_real_states(wm, ep, horizon=1, n=3, tau=1.0, seed=0)
    assert real == pytest.approx(ep["rewards"])
    assert pred == pytest.approx(reward_fidelity.teacher_forced(wm, ep), rel=1e-5, abs=1e-6)


def test_longer_dreams_that_draw_the_real_latents_pay_each_segments_teacher_forced_sum(
    monkeypatch,
):
    """Dreams whose next z is the real next frame's code replay the episode itself: each
    4-step segment pays the sum of M's teacher-forced rewards over its steps."""
    wm = tiny_world_model("car_racing", done_bias=-50.0)
    ep = episode(11)
    mu, _ = wm.vae.encode(frames_to_tensor(ep["frames"], wm.device))  # (12, Z): every frame
    at = torch.tensor([0, 4]).repeat_interleave(2)  # the dreams' starts, 2 dreams each
    steps = iter(range(1, 5))
    monkeypatch.setattr(dc, "posterior_sample", lambda m, logvar, g: m.clone())
    monkeypatch.setattr(dc, "sample", lambda mixture, tau, g: mu[at + next(steps)].clone())
    pred, real = reward_fidelity.from_real_states(wm, ep, horizon=4, n=2, tau=1.0, seed=0)
    forced = reward_fidelity.teacher_forced(wm, ep)
    assert pred == pytest.approx([forced[0:4].sum(), forced[4:8].sum()], rel=1e-5, abs=1e-6)
    assert real == pytest.approx([sum(ep["rewards"][0:4]), sum(ep["rewards"][4:8])])


def test_segments_cover_whole_horizons_and_the_seed_fixes_the_dreams():
    wm = tiny_world_model("car_racing", done_bias=-50.0)
    ep = episode(11)
    pred, real = reward_fidelity.from_real_states(wm, ep, horizon=4, n=2, tau=1.0, seed=0)
    assert len(pred) == len(real) == 2  # steps 0-3 and 4-7; 8-10 are not a whole segment
    again, _ = reward_fidelity.from_real_states(wm, ep, horizon=4, n=2, tau=1.0, seed=0)
    assert np.array_equal(pred, again)
    other, _ = reward_fidelity.from_real_states(wm, ep, horizon=4, n=2, tau=1.0, seed=1)
    assert not np.array_equal(pred, other)
    none, _ = reward_fidelity.from_real_states(wm, ep, horizon=12, n=2, tau=1.0, seed=0)
    assert len(none) == 0
