"""Dreams from real states: the bank of M's teacher-forced states, evolve with it, the env."""

from __future__ import annotations

import json
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_world_model
from gymnasium.utils.env_checker import check_env
from safetensors.torch import load_file, save_file

import dreamgym
from dreamgym import dream_core as dc
from dreamgym.dream import DreamVectorEnv
from dreamgym.mdnrnn import LSTMState
from dreamgym.policy import controller_config, save_controller
from dreamgym.rollouts import DreamEvaluator, dream_rollouts
from dreamgym.starts import RealStarts
from dreamgym.train import evolve
from dreamgym.train.common import LATENTS, open_run
from dreamgym.train.evaluate import EvaluateConfig, format_table
from dreamgym.train.evaluate import run as evaluate_run
from dreamgym.world_model import WorldModel, WorldModelError

torch.set_num_threads(1)

LENGTHS = (7, 12, 3)


def fake_latents(lengths=LENGTHS, z_dim: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Encoded CarRacing episodes of these lengths, as encode writes them."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    return {
        "mu": rng.normal(size=(n, z_dim)).astype(np.float32),
        "logvar": np.full((n, z_dim), -3.0, np.float32),
        "actions": rng.uniform([-1, 0, 0], [1, 1, 1], (n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminated": np.zeros(n, bool),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    }


def test_the_bank_holds_m_state_after_reading_the_real_episode_up_to_each_start():
    wm = tiny_world_model("car_racing")
    lat = fake_latents()
    bank = RealStarts.from_latents(wm.mdnrnn, wm.game.executed_action, lat, every=5)
    # starts at frames 0, 5, 10 of each episode long enough: 2 + 3 + 1
    assert len(bank) == 6
    offsets = lat["offsets"]
    found = 0
    for ep, length in enumerate(LENGTHS):
        s = offsets[ep]
        for t in range(0, length, 5):
            z = torch.as_tensor(lat["mu"][s : s + t])[None]  # (1, t, Z)
            a = torch.as_tensor(lat["actions"][s : s + t])[None]
            if t == 0:
                h = c = torch.zeros(16)
            else:
                _, state = wm.mdnrnn(z, a)
                h, c = state.h[0], state.c[0]
            match = [
                r for r in range(len(bank))
                if np.array_equal(bank.mu[r].numpy(), lat["mu"][s + t])
            ]  # fmt: skip
            assert len(match) == 1
            r = match[0]
            torch.testing.assert_close(bank.lstm.h[r], h, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(bank.lstm.c[r], c, atol=1e-5, rtol=1e-5)
            found += 1
    assert found == len(bank)
    with pytest.raises(ValueError, match="every"):
        RealStarts.from_latents(wm.mdnrnn, wm.game.executed_action, lat, every=0)
    with pytest.raises(ValueError, match="dimensions"):
        RealStarts.from_latents(wm.mdnrnn, wm.game.executed_action, fake_latents(z_dim=8), every=5)


def test_dreams_from_real_starts_begin_in_the_bank_and_are_reproducible():
    wm = tiny_world_model("car_racing", done_bias=-50.0)  # dreams that never end
    bank = RealStarts.from_latents(wm.mdnrnn, wm.game.executed_action, fake_latents(), every=5)
    g = torch.Generator().manual_seed(3)
    state = dc.from_bank(wm, bank, 64, g)
    rows = [int(torch.argmin((bank.mu - state.z[i]).square().sum(1))) for i in range(64)]
    assert len(set(rows)) == len(bank)  # every row drawn, each one exactly
    torch.testing.assert_close(state.lstm.h, bank.lstm.h[rows])
    noise = (state.z - bank.mu[rows]).std().item()  # z from V's posterior, sd exp(-3 / 2)
    assert abs(noise - np.exp(-1.5)) < 0.1 * np.exp(-1.5)
    params = np.random.default_rng(0).normal(0, 0.3, (4, controller_config(wm).num_params))
    ev = DreamEvaluator(wm, 1.0, max_steps=6, starts=bank)
    r = ev.returns(params, 5, seed=1)
    np.testing.assert_array_equal(r, ev.returns(params, 5, seed=1))
    assert ev.steps == 2 * 4 * 5 * 6  # every dream lasted max_steps
    first = DreamEvaluator(wm, 1.0, max_steps=6).returns(params, 5, seed=1)
    assert not np.array_equal(r, first)
    with pytest.raises(ValueError, match="starts"):
        dream_rollouts(wm, params, 2, 1.0, g, 6, world=wm, starts=bank)


def test_evolve_from_real_starts_uses_the_runs_encoded_episodes(tmp_path):
    run_dir, _ = open_run(tmp_path / "run", "car_racing")
    tiny_world_model("car_racing").save(run_dir / "world_model")
    cfg = evolve.EvolveConfig(
        tau=1.0, generations=2, popsize=6, trials=3, max_steps=8, eval_every=1,
        eval_rollouts=8, seed=1, threads=1, inputs="z", real_starts=4,
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="encode"):
        evolve.run(cfg, run_dir)
    np.savez(run_dir / LATENTS, **fake_latents())
    out = evolve.run(cfg, run_dir)
    assert out == run_dir / evolve.folder_name(cfg)
    assert out.name != evolve.folder_name(replace(cfg, real_starts=0))
    info = json.loads((out / "controller.json").read_text())
    assert info["real_starts"] == 4 and info["max_steps"] == 8
    assert [e["generation"] for e in info["evals"]] == [1, 2]
    with pytest.raises(ValueError, match="real_starts"):
        evolve.run(evolve.EvolveConfig(real_starts=-1), run_dir)
    with pytest.raises(ValueError, match="real_starts"):
        evolve.run(evolve.EvolveConfig(real_starts=4, real=True), run_dir)


def test_a_world_model_folder_carries_its_bank_and_the_env_starts_there(tmp_path):
    wm = tiny_world_model("car_racing", done_bias=-50.0)
    wm.starts = RealStarts.from_latents(
        wm.mdnrnn, wm.game.executed_action, fake_latents(), every=5
    ).subset(5, seed=0)
    loaded = WorldModel.load(wm.save(tmp_path / "wm"))
    assert json.loads((tmp_path / "wm" / "config.json").read_text())["starts_bank_size"] == 5
    for key, value in wm.starts.tensors("").items():
        assert torch.equal(loaded.starts.tensors("")[key], value)
    H = wm.mdnrnn.config.hidden
    env = gym.make("DreamCarRacing-v0", world_model=loaded, starts="real", max_episode_steps=4)
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    bank_h = loaded.starts.lstm.h.numpy()
    assert any(np.array_equal(obs[-H:], h) for h in bank_h)
    first, _ = gym.make("DreamCarRacing-v0", world_model=loaded).reset(seed=0)
    assert not first[-H:].any()  # the paper's start: h0 = 0
    venv = DreamVectorEnv(64, "car_racing", world_model=loaded, starts="real", max_episode_steps=4)
    obs, _ = venv.reset(seed=0)
    bank_mu, Z = loaded.starts.mu.numpy(), wm.mdnrnn.config.z_dim
    assert {int(np.square(bank_mu - o[:Z]).sum(1).argmin()) for o in obs} == set(range(5))
    for _ in range(5):  # truncated at step 4, restarted from the bank on step 5 (NEXT_STEP)
        obs, *_ = venv.step(np.zeros((64, 3), np.float32))
    assert all(np.abs(bank_h - o[-H:]).sum(1).min() == 0 for o in obs)
    one = DreamVectorEnv(1, "car_racing", world_model=loaded, starts="real")
    np.testing.assert_array_equal(one.reset(seed=7)[0][0], env.reset(seed=7)[0])
    # a file with part of a bank names the missing key
    tensors = load_file(tmp_path / "wm" / "weights.safetensors")
    del tensors["starts.c"]
    save_file(tensors, tmp_path / "wm" / "weights.safetensors")
    with pytest.raises(WorldModelError, match="starts.c"):
        WorldModel.load(tmp_path / "wm")


def test_a_doom_bank_widens_the_cell_bound_in_dream_and_real_game_alike():
    wm = tiny_world_model("doom_take_cover")
    Z, H = wm.mdnrnn.config.z_dim, wm.mdnrnn.config.hidden
    c = torch.zeros(3, H)
    c[1, 2] = -7.3  # a real state 7.3 from zero: the dream may start there
    wm.starts = RealStarts(torch.zeros(3, Z), torch.zeros(3, Z), LSTMState(torch.zeros(3, H), c))
    dream = gym.make("DreamDoom-v0", world_model=wm, starts="real")
    assert (dream.observation_space.high[Z : Z + H] == 2100 + 8).all()
    real = dreamgym.make_real("DreamDoom-v0", world_model=wm)
    assert real.observation_space == dream.observation_space
    real.close()


def test_evaluate_scores_a_controller_in_dreams_from_the_folders_bank(tmp_path):
    wm = tiny_world_model("car_racing", done_bias=-50.0)
    params = np.random.default_rng(0).normal(0, 0.3, controller_config(wm).num_params)
    run_dir, _ = open_run(tmp_path / "run", "car_racing")
    wm.save(run_dir / "world_model")
    save_controller(run_dir / "evolve_tau1", params, wm.game, {"tau": 1.0})
    cfg = EvaluateConfig(episodes=8, dream=True, max_steps=6, seed=2, starts="real")
    with pytest.raises(ValueError, match="no bank of real states"):
        evaluate_run(cfg, run_dir)
    wm.starts = RealStarts.from_latents(wm.mdnrnn, wm.game.executed_action, fake_latents(), every=5)
    wm.save(run_dir / "world_model")
    out = evaluate_run(cfg, run_dir)
    assert out.name == "evaluate_dream_tau1_real_starts.json"
    report = json.loads(out.read_text())
    loaded = WorldModel.load(run_dir / "world_model")
    expected = DreamEvaluator(loaded, 1.0, 6, starts=loaded.starts).returns(params[None], 8, 2)
    np.testing.assert_array_equal(report["returns"], expected[0])
    assert report["starts"] == "real" and "real starts" in format_table(out)
    first = json.loads(evaluate_run(replace(cfg, starts="first"), run_dir).read_text())
    assert first["starts"] == "first" and first["returns"] != report["returns"]
    with pytest.raises(ValueError, match="starts"):
        evaluate_run(replace(cfg, dream=False), run_dir)


def car_ensemble() -> WorldModel:
    """A tiny CarRacing world model of two Ms whose dreams never end."""
    wm = tiny_world_model("car_racing", done_bias=-50.0)
    other = tiny_world_model("car_racing", seed=1, done_bias=-50.0).mdnrnn
    return WorldModel(wm.game, wm.vae, wm.mdnrnn, wm.z0_mu, wm.z0_logvar, ensemble=[other])


def test_an_ensembles_bank_starts_each_dream_from_its_members_state(tmp_path):
    wm = car_ensemble()
    lat = fake_latents()
    bank = RealStarts.from_latents(wm.members, wm.game.executed_action, lat, every=5)
    for k, m in enumerate(wm.members):  # each member read the same episodes up to each start
        alone = RealStarts.from_latents(m, wm.game.executed_action, lat, every=5)
        torch.testing.assert_close(bank.members[k].h, alone.lstm.h)
        torch.testing.assert_close(bank.members[k].c, alone.lstm.c)
    wm.starts = bank
    loaded = WorldModel.load(wm.save(tmp_path / "wm"))
    for key, value in bank.tensors("").items():
        assert torch.equal(loaded.starts.tensors("")[key], value)
    state = dc.from_bank(loaded, loaded.starts, 64, torch.Generator().manual_seed(0))
    assert set(state.member.tolist()) == {0, 1}
    for i in range(64):
        r = int(torch.argmin((bank.mu - state.z[i]).square().sum(1)))
        k = int(state.member[i])
        assert torch.equal(state.lstm.h[i], bank.members[k].h[r])  # the member's own state
        assert torch.equal(state.reader.h[i], bank.lstm.h[r])  # what the controller reads
    H = wm.mdnrnn.config.hidden
    venv = DreamVectorEnv(16, "car_racing", world_model=loaded, starts="real")
    obs, _ = venv.reset(seed=0)
    assert all(np.abs(bank.lstm.h.numpy() - o[-H:]).sum(1).min() == 0 for o in obs)


def test_a_bank_of_member_0_alone_refuses_the_other_members_dreams(tmp_path):
    wm = car_ensemble()
    wm.starts = RealStarts.from_latents(wm.mdnrnn, wm.game.executed_action, fake_latents(), 5)
    for members in ("sample", 1):
        with pytest.raises(ValueError, match="holds member 0's states only; build it with every"):
            gym.make("DreamCarRacing-v0", world_model=wm, starts="real", members=members)
    gym.make("DreamCarRacing-v0", world_model=wm, starts="real", members=0).reset(seed=0)
    params = np.zeros((2, controller_config(wm).num_params))
    with pytest.raises(ValueError, match="every member"):  # evolve's ensemble scoring
        DreamEvaluator(wm, 1.0, max_steps=4, starts=wm.starts)
    DreamEvaluator(wm, 1.0, max_steps=4, starts=wm.starts, members=0).returns(params, 2, seed=0)
    # a folder whose bank holds some members' states but not all names the missing key
    wm.starts = RealStarts.from_latents(wm.members, wm.game.executed_action, fake_latents(), 5)
    wm.save(tmp_path / "wm")
    tensors = load_file(tmp_path / "wm" / "weights.safetensors")
    del tensors["starts.members.1.c"]
    save_file(tensors, tmp_path / "wm" / "weights.safetensors")
    with pytest.raises(WorldModelError, match="starts.members.1.c"):
        WorldModel.load(tmp_path / "wm")
    # and a bank with states of a member the world model does not have names its key
    tensors["starts.members.1.c"] = tensors["starts.members.1.h"].clone()
    tensors["starts.members.2.h"] = tensors["starts.members.1.h"].clone()
    save_file(tensors, tmp_path / "wm" / "weights.safetensors")
    with pytest.raises(WorldModelError, match="starts.members.2.h' names no member"):
        WorldModel.load(tmp_path / "wm")
