"""Devices: a world model moves whole, loads onto a device in float32, and the dream and
the trainers make every tensor where the world model lives. The CUDA runs skip without
CUDA; the same code runs on the CPU here."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_world_model
from test_sequence_sampler import latents

from dreamgym import data, rollouts
from dreamgym.mdnrnn import LSTMState
from dreamgym.policy import controller_config, load_controller
from dreamgym.shipped import load_world_model, same_device
from dreamgym.starts import RealStarts
from dreamgym.train.common import open_run
from dreamgym.vae import frames_to_tensor, vae_loss
from dreamgym.world_model import WEIGHTS_FILE, WorldModel, atomic_save_tensors, read_tensors
from dreamgym.wrappers import LatentObservation

torch.set_num_threads(1)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def with_bank_and_ensemble(game: str) -> WorldModel:
    """A tiny world model with a second M and a bank of 5 real starts."""
    wm = tiny_world_model(game)
    wm.ensemble = [tiny_world_model(game, seed=1).mdnrnn]
    Z, H = wm.vae.z_dim, wm.mdnrnn.config.hidden
    h, c = torch.rand(2, 5, H) - 0.5  # in the bounds of the observation space
    wm.starts = RealStarts(torch.randn(5, Z), torch.zeros(5, Z), LSTMState(h, c))
    return wm


def every_tensor(wm: WorldModel) -> list[torch.Tensor]:
    tensors = [*wm.vae.state_dict().values(), wm.z0_mu, wm.z0_logvar]
    for m in wm.members:
        tensors += list(m.state_dict().values())
    return tensors + list(wm.starts.tensors("").values())


def test_a_world_model_moves_whole_and_a_given_one_is_never_moved():
    wm = with_bank_and_ensemble("doom_take_cover")
    assert load_world_model("doom_take_cover", wm, "cpu:0") is wm  # the same device: no copy
    moved = load_world_model("doom_take_cover", wm, "meta")  # a copy, every tensor moved
    assert moved is not wm and all(t.device.type == "meta" for t in every_tensor(moved))
    assert moved.device.type == "meta"
    assert all(t.device.type == "cpu" for t in every_tensor(wm)), "the caller's model moved"
    assert wm.to("meta") is wm and all(t.device.type == "meta" for t in every_tensor(wm))
    assert same_device("cpu", "cpu:0") and not same_device("cpu", "meta")
    assert not same_device("cuda:0", "cuda:1") and not same_device("cuda", "cpu")


def test_a_file_of_other_float_types_loads_as_float32_onto_the_device_and_dreams(tmp_path):
    wm = with_bank_and_ensemble("doom_take_cover")
    wm.save(tmp_path)
    path = tmp_path / WEIGHTS_FILE
    tensors = read_tensors(path)
    tensors = {k: v.double() if k.startswith(("z0", "starts")) else v.half()
               for k, v in tensors.items()}  # fmt: skip
    atomic_save_tensors(tensors, path, {"game": "doom_take_cover"})
    loaded = WorldModel.load(tmp_path)
    assert {t.dtype for t in every_tensor(loaded)} == {torch.float32}
    env = gym.make("DreamDoom-v0", world_model=loaded, starts="real", members=0)
    env.reset(seed=0)
    obs, reward, *_ = env.step(np.array([0.9], np.float32))
    assert obs.dtype == np.float32 and np.isfinite(obs).all()
    on_meta = WorldModel.load(tmp_path, device="meta")  # loaded straight onto a device
    assert {(t.device.type, t.dtype) for t in every_tensor(on_meta)} == {("meta", torch.float32)}


class _Frames(gym.Env):
    """A stand-in real game: black 64x64 frames, +1 a step, never ending."""

    observation_space = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        return np.zeros((64, 64, 3), np.uint8), {}

    def step(self, action):
        return np.zeros((64, 64, 3), np.uint8), 1.0, False, False, {}


def _dreams(game: str, dream_id: str, wm: WorldModel) -> None:
    for mode in ("latent", "pixels"):
        env = gym.make(dream_id, world_model=wm, obs_mode=mode, members=0, starts="real")
        env.reset(seed=0)
        for _ in range(3):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
    venv = gym.make_vec(dream_id, num_envs=4, world_model=wm, dropout=0.1)
    venv.reset(seed=0)
    for _ in range(4):
        venv.step(venv.action_space.sample())
    p = np.random.default_rng(0).normal(0, 0.3, (3, controller_config(wm).num_params))
    rollouts.DreamEvaluator(wm, 1.0, 12, worlds=[wm], dropout=0.1).returns(p, 2, 0)
    rollouts.DreamEvaluator(wm, 1.0, 12, starts=wm.starts, members=0).returns(p, 2, 0)


def _trainers(wm: WorldModel, m) -> None:
    """A step of V's and of M's (``m``: with dropout) losses, and a bank of real starts."""
    from dreamgym.train.fit_mdnrnn import FitMDNRNNConfig, SequenceSampler, losses

    x = frames_to_tensor(np.zeros((2, 64, 64, 3), np.uint8), wm.device)
    x_hat, mu, logvar = wm.vae(x, torch.Generator(device=wm.device).manual_seed(0))
    vae_loss(x, x_hat, mu, logvar, 0.5)[0].backward()
    lat = latents([30, 12], z_dim=wm.vae.z_dim)
    lat["actions"] = np.zeros((42, wm.game.action_dim), np.float32)
    b = SequenceSampler(lat, wm.game.executed_action, 10, 0).batch(4, wm.device)
    cfg = FitMDNRNNConfig(open_loop_steps=3, open_loop_every=2)
    losses(m, b, cfg, torch.Generator(device=wm.device).manual_seed(0))["loss"].backward()
    RealStarts.from_latents(wm.mdnrnn, wm.game.executed_action, lat, 3).subset(4)


@pytest.mark.parametrize("game,dream_id", [("doom_take_cover", "DreamDoom-v0"),
                                           ("car_racing", "DreamCarRacing-v0")])  # fmt: skip
def test_the_dream_and_the_trainers_make_no_tensor_off_the_world_models_device(game, dream_id):
    """Under a meta default device every tensor made without a device is a meta tensor,
    which holds no data: a path that made one fails where the tensor is read or moved
    (the bank's subset did: a CPU generator with the default device). The world model
    stays on the CPU, so these paths name the device of every tensor they make, as on a
    GPU under ``torch.set_default_device("cuda")``. Real-game paths too: the latent view
    of a game, and the real game's controller."""
    from dreamgym.mdnrnn import MDNRNN

    wm = with_bank_and_ensemble(game)
    m = MDNRNN(type(wm.mdnrnn.config)(**{**wm.mdnrnn.config.to_dict(), "dropout": 0.2}))
    doom = tiny_world_model("doom_take_cover")
    params = np.zeros(controller_config(doom).num_params, np.float32)
    with torch.device("meta"):
        _dreams(game, dream_id, wm)
        _trainers(wm, m)
        real = LatentObservation(_Frames(), doom, 10)
        real.reset(seed=0)
        real.step(np.array([0.5], np.float32))
        assert rollouts.play_episode(real, doom, params, 0, 5) == (5.0, 5)


def _synthetic_run(tmp_path: Path, game: str = "doom_take_cover") -> Path:
    """A run directory with 3 short episodes of random frames (no game needed)."""
    run_dir, _ = open_run(tmp_path / "run", game)
    rng = np.random.default_rng(0)
    for i, T in enumerate((30, 25, 20)):
        episode = {
            "frames": rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8),
            "actions": rng.uniform(-1, 1, (T, 1)).astype(np.float32),
            "rewards": np.ones(T, np.float32),
            "terminated": np.arange(T) == T - 1,
        }
        data.append_manifest(run_dir, data.write_episode(run_dir / data.EPISODES_DIR, i, episode))
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_every_training_stage_runs_on_the_device(device, tmp_path):
    """fit-vae, encode, fit-mdnrnn, evolve and ppo with ``device``, and the dream of the
    world model they make; on CUDA, the dream's state stays on the GPU between steps."""
    pytest.importorskip("stable_baselines3")
    from test_ppo import tiny_ppo

    from dreamgym.train import encode, evolve, export, fit_mdnrnn, fit_vae, ppo

    run_dir = _synthetic_run(tmp_path)
    fit_vae.run(fit_vae.FitVAEConfig(epochs=0.5, batch_size=8, device=device), run_dir)
    encode.run(encode.EncodeConfig(batch_size=16, device=device), run_dir)
    mdn = fit_mdnrnn.FitMDNRNNConfig(hidden=16, steps=3, batch_size=2, seq_len=10, device=device)
    fit_mdnrnn.run(mdn, run_dir)
    wm_dir = export.assemble(run_dir)
    tiny = dict(generations=1, popsize=4, trials=2, max_steps=20, eval_every=1, eval_rollouts=4)
    out = evolve.run(evolve.EvolveConfig(**tiny, device=device), run_dir)
    assert load_controller(out).params.shape == (
        controller_config(WorldModel.load(wm_dir)).num_params,
    )
    out = ppo.run(tiny_ppo(timesteps=256, check_every=128, device=device), run_dir)
    assert json.loads((out / "controller.json").read_text())["trainer"] == "ppo"
    env = gym.make("DreamDoom-v0", world_model=str(wm_dir), device=device)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.array([0.5], np.float32))
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float32
    state = env.unwrapped._dreams.state  # the batch of one dream, between steps
    assert all(t.device.type == device for t in (state.z, state.lstm.h, state.lstm.c))
