"""The shipped models: each controller and its recorded real score; the CarRacing dream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dreamgym

torch.set_num_threads(1)

FOLDER = dreamgym.shipped_dir("doom_take_cover")
PANEL = Path(__file__).parents[1] / "benchmarks" / "panel" / "car_racing"
"""Controllers the shipped CarRacing C descends from; kept in the repository, not in the wheel."""


def report() -> dict:
    return json.loads((FOLDER / "evaluate_real.json").read_text())


def test_the_shipped_controller_was_trained_only_in_the_dream():
    policy = dreamgym.load_controller("DreamDoom-v0")
    info = policy.info
    assert info["game"] == "doom_take_cover" and info["trained_in"] == "dream"
    assert info["tau"] == 1.15 and info["num_params"] == 1088  # the paper's C: [z, c, h] -> 1
    env = dreamgym.make_real("DreamDoom-v0")
    assert policy.obs_dim == env.observation_space.shape[0]
    env.close()


def test_the_shipped_report_is_100_real_episodes_at_or_above_solved():
    r = report()
    assert r["mode"] == "real" and r["episodes"] == 100 and len(r["returns"]) == 100
    assert r["seeds"] == list(range(100))
    assert r["mean"] == pytest.approx(np.mean(r["returns"]))
    assert r["mean"] >= 750  # "solved"


@pytest.mark.slow
def test_the_shipped_controller_replays_its_reported_episodes_exactly():
    """The real game is deterministic per seed: two episodes of the report, replayed the way
    a user plays the shipped controller."""
    r = report()
    returns = np.array(r["returns"])
    seeds = [int(np.argmin(returns)), int(np.argsort(returns)[len(returns) // 4])]
    policy = dreamgym.load_controller("DreamDoom-v0")
    env = dreamgym.make_real("DreamDoom-v0")
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += reward
                done = terminated or truncated
            assert total == returns[seed], f"seed {seed}"
    finally:
        env.close()


# ---------------------------------------------------------------- CarRacing


def test_the_shipped_car_racing_controller_was_trained_only_in_dreams_and_reads_z_and_h():
    folder = dreamgym.shipped_dir("car_racing")
    policy = dreamgym.load_controller("DreamCarRacing-v0")
    info = policy.info
    assert info["game"] == "car_racing" and info["trained_in"] == "dream"
    assert info["trainer"] == "ppo" and info["starts"] == "real" and info["max_steps"] == 250
    assert info["inputs"] == "zh" and info["tau"] == 1.0
    weight = policy.params[: 3 * (32 + 256)].reshape(3, 32 + 256)
    assert np.any(weight[:, 32:] != 0) and np.any(weight[:, :32] != 0)  # reads M's h too
    checks = [json.loads(line) for line in (folder / "ppo_metrics.jsonl").read_text().splitlines()]
    best = max(checks, key=lambda r: r["dream_score"])  # kept by the dream score alone
    assert info["timesteps"] == best["timesteps"] and info["dream_score"] == best["dream_score"]
    start = dreamgym.load_controller(PANEL / "cmaes")  # where PPO started
    assert start.info["trained_in"] == "dream" and start.info["real_starts"] == 10
    assert checks[0]["timesteps"] == 0 and not np.array_equal(start.params, policy.params)
    r = json.loads((folder / "evaluate_real.json").read_text())
    assert r["mode"] == "real" and r["seeds"] == list(range(100)) and len(r["returns"]) == 100
    assert r["mean"] == pytest.approx(np.mean(r["returns"])) and r["mean"] >= 600


def test_the_car_racing_controllers_the_shipped_one_started_from_read_z_only():
    # "init" records the folder each started from when it was trained (since moved here)
    for name, init in (("z_only", "round7_controller"), ("round7", None)):
        policy = dreamgym.load_controller(PANEL / name)
        assert policy.info["inputs"] == "z" and policy.info["trained_in"] == "dream"
        assert policy.info["init"] == (init and f"models/car_racing/{init}")
        weight = policy.params[: 3 * (32 + 256)].reshape(3, 32 + 256)
        assert np.all(weight[:, 32:] == 0) and np.any(weight[:, :32] != 0)  # h is never read


def test_the_shipped_car_racing_dream_loads_offline_and_batches():
    import gymnasium as gym

    venv = gym.make_vec("DreamCarRacing-v0", num_envs=64)
    wm = venv.unwrapped.world_model
    assert wm.game.name == "car_racing" and wm.mdnrnn.config.reward_head
    assert (wm.mdnrnn.config.z_dim, wm.mdnrnn.config.hidden) == (32, 256)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (64, 32 + 256)
    total = np.zeros(64)
    for _ in range(20):
        obs, reward, term, trunc, _ = venv.step(np.tile([0.0, 0.3, 0.0], (64, 1)))
        total += reward
    assert np.isfinite(total).all() and len(np.unique(total)) > 1  # M's reward head, per dream
    venv.close()
    # dreams from the folder's bank of real states: mid-drive, M's state already set
    venv = gym.make_vec("DreamCarRacing-v0", num_envs=64, starts="real", max_episode_steps=250)
    assert len(venv.unwrapped.world_model.starts) == 2048
    obs, _ = venv.reset(seed=0)
    moving = (np.abs(obs[:, 32:]).sum(1) > 0).mean()  # h = 0 only at a drive's first frame
    assert moving > 0.9 and venv.unwrapped.max_episode_steps == 250
    venv.close()


@pytest.mark.slow
def test_transfer_eval_example_scores_the_shipped_controller_and_leaves_its_reports(tmp_path):
    """examples/transfer_eval.py on the shipped Doom controller: a real and a dream column,
    reports under runs/evaluate/, the shipped 100-episode reports untouched."""
    import subprocess
    import sys

    from dreamgym.shipped import shipped_dir

    shipped = shipped_dir("doom_take_cover") / "evaluate_real.json"
    before = shipped.read_bytes()
    script = Path(__file__).parents[1] / "examples" / "transfer_eval.py"
    out = subprocess.run(
        [sys.executable, str(script), str(shipped.parent), "--episodes", "2", "--taus", "1.15",
         "--workers", "1"],
        cwd=tmp_path, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    assert "2 episodes per cell (real: seeds 0-1)" in out.stdout
    row = out.stdout.strip().splitlines()[-1]
    assert row.count("±") == 2
    report = json.loads((tmp_path / "runs/evaluate/doom_take_cover/evaluate_real.json").read_text())
    assert report["seeds"] == [0, 1] and report["returns"] == json.loads(before)["returns"][:2]
    assert shipped.read_bytes() == before
