"""The ppo stage: PPO trains the paper's C in the dream, keeps the best C, resumes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import sigkill_when
from test_evolve import make_run, tiny_config

from dreamgym.policy import load_controller, save_controller
from dreamgym.rollouts import DreamEvaluator
from dreamgym.train import evolve, ppo
from dreamgym.train.common import RunDirError, load_checkpoint
from dreamgym.train.provenance import StaleError
from dreamgym.world_model import WorldModel

pytest.importorskip("stable_baselines3")
torch.set_num_threads(1)


def tiny_ppo(**kw) -> ppo.PPOConfig:
    base = dict(timesteps=1024, num_envs=8, max_steps=40, n_steps=16, batch_size=64, n_epochs=2,
                check_every=256, check_trials=16, learning_rate=3e-3, threads=1)  # fmt: skip
    return ppo.PPOConfig(**{**base, **kw})


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_learns_in_a_tiny_dream_and_keeps_the_best_c(tmp_path):
    run_dir = make_run(tmp_path)  # moving right keeps the agent alive; C = 0 dies in ~11 steps
    config = tiny_ppo(timesteps=4096, log_std_init=0.0)
    out = ppo.run(config, run_dir)
    assert out == run_dir / ppo.folder_name(config)
    assert out.name.startswith("ppo-") and (out / ppo.CONFIG_NAME).is_file()
    log = rows(out)
    assert [r["timesteps"] for r in log] == list(range(0, 4097, 256))
    best = max(log, key=lambda r: r["dream_score"])
    assert best["dream_score"] > 2 * log[0]["dream_score"]  # PPO learned to survive longer
    c = load_controller(out)
    assert c.info["trainer"] == "ppo" and c.info["timesteps"] == best["timesteps"]
    ev = DreamEvaluator(WorldModel.load(run_dir / "world_model"), 1.0, max_steps=40)
    assert ev.returns(c.params[None], 16, 0).mean() == pytest.approx(best["dream_score"])


def test_ppo_starts_from_a_controller_and_a_rerun_continues(tmp_path):
    run_dir = make_run(tmp_path)
    start = evolve.run(tiny_config(generations=2), run_dir)
    config = tiny_ppo(init=str(start), timesteps=512)
    out = ppo.run(config, run_dir)
    ev = DreamEvaluator(WorldModel.load(run_dir / "world_model"), 1.0, max_steps=40)
    assert rows(out)[0]["dream_score"] == pytest.approx(
        ev.returns(load_controller(start).params[None], 16, 0).mean()
    )  # the first check scores the C it started from
    _, values = load_checkpoint(out / ppo.CHECKPOINT)
    assert values["timesteps"] == 512
    ppo.run(tiny_ppo(init=str(start), timesteps=1024), run_dir)
    assert [r["timesteps"] for r in rows(out)] == [0, 256, 512, 768, 1024]
    _, values = load_checkpoint(out / ppo.CHECKPOINT)
    assert values["timesteps"] == 1024 and values["best"] == max(
        r["dream_score"] for r in rows(out)
    )
    assert ppo.folder_name(tiny_ppo(init=str(start))) != ppo.folder_name(tiny_ppo())
    faster = tiny_ppo(init=str(start), timesteps=2048, learning_rate=1e-3)
    assert ppo.folder_name(faster) != out.name  # another folder; in this one, a refusal
    with pytest.raises(RunDirError, match="started with learning_rate=0.003, now learning_rate"):
        ppo.train(faster, run_dir / "world_model", out)
    (out / ppo.CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError, match="corrupt"):
        ppo.run(tiny_ppo(init=str(start), timesteps=2048), run_dir)


def test_a_start_rewritten_since_is_refused_not_resumed(tmp_path):
    """The folder ``init`` names is a start only by its weights: rewritten (distill or
    evolve run again), PPO's folder from the old one is not continued."""
    run_dir = make_run(tmp_path)
    start = evolve.run(tiny_config(generations=2), run_dir)
    ppo.run(tiny_ppo(init=str(start), timesteps=256), run_dir)
    params = load_controller(start).params
    save_controller(start, torch.as_tensor(params) + 0.1, "doom_take_cover")
    with pytest.raises(StaleError, match="its init has changed since"):
        ppo.run(tiny_ppo(init=str(start), timesteps=512), run_dir)


def test_ppo_keeps_the_c_held_out_dreams_score_best(tmp_path):
    """check_worlds: each check also scores C in another M's first-frame dreams (C reading
    the run's M) and keeps C by that score; a world model with another V is refused."""
    from test_evolve import tiny_world

    from dreamgym.rollouts import dream_rollouts

    run_dir = make_run(tmp_path / "run")
    wm = WorldModel.load(run_dir / "world_model")
    harsh = tiny_world(danger=0.3)
    harsh.vae.load_state_dict(wm.vae.state_dict())  # an M of the same V
    harsh_dir = harsh.save(tmp_path / "harsh")
    config = tiny_ppo(timesteps=768, log_std_init=0.0, check_worlds=(str(harsh_dir),))
    out = ppo.run(config, run_dir)
    assert out.name == ppo.folder_name(config) != ppo.folder_name(tiny_ppo(timesteps=768))
    log = rows(out)
    assert all("held_out_score" in r for r in log)
    best = max(log, key=lambda r: r["held_out_score"])
    assert [r["kept"] for r in log] == [
        r["held_out_score"] > max([-np.inf] + [q["held_out_score"] for q in log[:i]])
        for i, r in enumerate(log)
    ]
    c = load_controller(out)
    assert c.info["held_out_score"] == best["held_out_score"]
    assert c.info["timesteps"] == best["timesteps"]
    g = torch.Generator().manual_seed(0)
    again, _ = dream_rollouts(
        wm, c.params[None], 16, 1.0, g, world=harsh, controller=c.controller.config
    )
    assert again.mean().item() == pytest.approx(best["held_out_score"])
    _, values = load_checkpoint(out / ppo.CHECKPOINT)
    assert values["best"] == best["held_out_score"]
    stranger = tiny_world().save(tmp_path / "stranger")  # a freshly initialised V
    with pytest.raises(ValueError, match="check_worlds: .* has another V"):
        ppo.train(tiny_ppo(check_worlds=(str(stranger),)), run_dir / "world_model", tmp_path / "x")
    assert not (tmp_path / "x").exists()


KILL_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[2])
from test_ppo import tiny_ppo
from dreamgym.train import ppo
ppo.run(tiny_ppo(timesteps=10**8), sys.argv[1])
"""


@pytest.mark.slow
def test_sigkill_during_ppo_then_rerun_continues_from_the_last_check(tmp_path):
    run_dir = make_run(tmp_path)
    out = run_dir / ppo.folder_name(tiny_ppo())  # the script's settings
    metrics = out / "metrics.jsonl"
    sigkill_when(
        [KILL_SCRIPT, str(run_dir), os.path.dirname(__file__)],
        lambda: metrics.exists() and len(rows(out)) >= 3,
        "ppo",
    )
    _, values = load_checkpoint(out / ppo.CHECKPOINT)
    done = values["timesteps"]
    assert done >= 256  # a kill between the third check's row and its checkpoint leaves 256
    ppo.run(tiny_ppo(timesteps=done + 512), run_dir)
    steps = [r["timesteps"] for r in rows(out)]
    assert steps[-2:] == [done + 256, done + 512]  # on from the last check, not from 0
    assert steps == sorted(set(steps)) and steps[0] == 0  # no check twice, one start
    assert load_controller(out).info["dream_score"] == max(r["dream_score"] for r in rows(out))


def test_a_c_on_z_only_never_weighs_h(tmp_path):
    run_dir = make_run(tmp_path)
    out = ppo.run(tiny_ppo(inputs="z", timesteps=512, log_std_init=0.0), run_dir)
    assert out.name == ppo.folder_name(tiny_ppo(inputs="z", log_std_init=0.0))
    c = load_controller(out)
    assert c.info["inputs"] == "z"
    z_dim = WorldModel.load(run_dir / "world_model").mdnrnn.config.z_dim
    w = c.controller.weight.detach()
    assert (w[:, z_dim:] == 0).all() and (w[:, :z_dim] != 0).any()
    zh = evolve.run(tiny_config(generations=2), run_dir)  # a C that reads h
    with pytest.raises(ValueError, match="reads h"):
        ppo.run(tiny_ppo(inputs="z", init=str(zh)), run_dir)
    z = evolve.run(tiny_config(generations=2, inputs="z"), run_dir)
    config = tiny_ppo(inputs="z", init=str(z), timesteps=256)
    tuned = ppo.train(config, run_dir / "world_model", tmp_path / "tuned")
    assert (load_controller(tuned).controller.weight.detach()[:, z_dim:] == 0).all()


def test_a_wall_time_budget_stops_at_a_check_with_the_checkpoint_written(tmp_path):
    run_dir = make_run(tmp_path)
    out = ppo.run(tiny_ppo(timesteps=10**6, seconds=0.5), run_dir)
    _, values = load_checkpoint(out / ppo.CHECKPOINT)
    assert 0 < values["timesteps"] < 10**6
    assert rows(out)[-1]["timesteps"] == values["timesteps"]
    load_controller(out)


@pytest.mark.parametrize(
    "field, value",
    [
        ("timesteps", 0),
        ("starts", "middle"),
        ("tau", 0.0),
        ("gamma", 1.5),
        ("check_every", 0),
        ("inputs", "h"),
    ],  # fmt: skip
)
def test_bad_config_is_a_clear_error(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        ppo.run(tiny_ppo(**{field: value}), make_run(tmp_path))


def test_init_must_fit_the_dream(tmp_path):
    run_dir = make_run(tmp_path)
    from dreamgym.policy import save_controller

    save_controller(tmp_path / "c", np.zeros(10 * 1), "doom_take_cover")
    with pytest.raises(ValueError, match="reads 10 inputs"):
        ppo.run(tiny_ppo(init=str(tmp_path / "c")), run_dir)
