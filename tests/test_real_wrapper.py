"""make_real: the real games seen through V and M, with exactly the dream's spaces."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import DREAM_IDS

import dreamgym
from dreamgym import shipped
from dreamgym.games import ENV_IDS
from dreamgym.vae import tensor_to_frames
from dreamgym.world_model import WorldModelError

GAME_IDS = ["DreamDoomTakeCover-v0", "DreamCarRacing-v0"]  # one per real game


@pytest.fixture(params=GAME_IDS)
def real_id(request) -> str:
    return request.param


@pytest.fixture
def real_wm(real_id, world_models):
    return world_models[ENV_IDS[real_id]]


def play(env: gym.Env, acts, seed: int):
    out = [env.reset(seed=seed)[0]]
    for a in acts:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append(obs)
        if terminated or truncated:
            break
    return out


@pytest.mark.parametrize("dream_id", DREAM_IDS)
def test_spaces_equal_the_dreams(dream_id, world_models):
    wm = world_models[ENV_IDS[dream_id]]
    dream = gym.make(dream_id, world_model=wm)
    for limit in (None, 5):
        real = dreamgym.make_real(dream_id, world_model=wm, max_episode_steps=limit)
        assert real.observation_space == dream.observation_space
        assert real.action_space == dream.action_space
        real.close()


def test_episode_in_space_and_truncated(real_id, real_wm):
    real = dreamgym.make_real(real_id, world_model=real_wm, max_episode_steps=6)
    real.action_space.seed(0)
    obs, _ = real.reset(seed=0)
    assert obs in real.observation_space
    for t in range(1, 7):
        obs, reward, terminated, truncated, _ = real.step(real.action_space.sample())
        assert obs in real.observation_space and isinstance(reward, float)
        assert truncated == (t == 6 and not terminated)
        if terminated:
            break
    real.close()


def test_same_seed_same_observations(real_id, real_wm):
    real = dreamgym.make_real(real_id, world_model=real_wm, max_episode_steps=20)
    acts = [real.action_space.sample() for _ in range(4)]
    a, b, c = play(real, acts, seed=1), play(real, acts, seed=1), play(real, acts, seed=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    real.close()


def test_m_consumes_the_executed_action(world_models):
    """Doom: 0.5 and 0.9 both move right (+1), so M's state after either is the same."""
    wm = world_models["doom_take_cover"]
    real = dreamgym.make_real("DreamDoom-v0", world_model=wm, max_episode_steps=20)
    Z, H = wm.mdnrnn.config.z_dim, wm.mdnrnn.config.hidden
    obs0, _ = real.reset(seed=0)
    h_half = real.step(np.array([0.5], np.float32))[0][-H:]
    real.reset(seed=0)
    h_full = real.step(np.array([0.9], np.float32))[0][-H:]
    with torch.no_grad():
        lstm, _ = wm.mdnrnn.step(
            wm.mdnrnn.initial_state(1), torch.from_numpy(obs0[None, :Z]), torch.ones(1, 1)
        )
    np.testing.assert_array_equal(h_half, h_full)
    np.testing.assert_allclose(h_full, lstm.h[0].numpy(), atol=1e-6)
    real.close()


def test_bad_actions_step_nothing(real_id, real_wm):
    real = dreamgym.make_real(real_id, world_model=real_wm, max_episode_steps=20)
    twin = dreamgym.make_real(real_id, world_model=real_wm, max_episode_steps=20)
    real.reset(seed=0), twin.reset(seed=0)
    space = real.action_space
    for action, error in [
        (np.zeros((2, *space.shape), np.float32), ValueError),
        (np.ones(space.shape, np.int64), TypeError),
        (np.full(space.shape, np.nan, np.float32), ValueError),
        (space.high + 1, ValueError),
    ]:
        with pytest.raises(error, match="action"):
            real.step(action)
    a = space.sample()
    np.testing.assert_array_equal(real.step(a)[0], twin.step(a)[0])
    real.close(), twin.close()


def test_bad_arguments(world_models):
    wm = world_models["doom_take_cover"]
    with pytest.raises(ValueError, match="dream_id"):
        dreamgym.make_real("CartPole-v1", world_model=wm)
    with pytest.raises(ValueError, match="dream_id"):
        dreamgym.make_real("DreamPong-v0", world_model=wm)
    with pytest.raises(ValueError, match="max_episode_steps"):
        dreamgym.make_real("DreamDoom-v0", world_model=wm, max_episode_steps=0)
    with pytest.raises(ValueError, match="world_model"):
        dreamgym.make_real("DreamCarRacing-v0", world_model=wm)
    with pytest.raises(ValueError, match="num_envs"):
        dreamgym.make_real_vec("DreamDoom-v0", 0, world_model=wm)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shipped, "_models_root", lambda: Path("no-models-here"))
        with pytest.raises(WorldModelError, match="dreamgym pipeline doom_take_cover"):
            dreamgym.make_real("DreamDoom-v0")
        with pytest.raises(WorldModelError, match="dreamgym export"):
            dreamgym.make_real_vec("DreamDoom-v0", 2)


@pytest.mark.slow
def test_make_real_vec_runs_in_workers(real_id, real_wm):
    venv = dreamgym.make_real_vec(real_id, 2, world_model=real_wm, max_episode_steps=10)
    try:
        dream = gym.make_vec(real_id, num_envs=2, world_model=real_wm)
        assert venv.single_observation_space == dream.single_observation_space
        assert venv.single_action_space == dream.single_action_space
        obs, _ = venv.reset(seed=0)
        assert obs in venv.observation_space
        for _ in range(3):
            obs, reward, *_ = venv.step(venv.action_space.sample())
            assert obs in venv.observation_space and reward.shape == (2,)
    finally:
        venv.close()


@pytest.mark.parametrize("pixels", ["reconstructed", "raw"])
def test_pixels_pass_check_env_in_the_dreams_pixel_space(real_id, real_wm, pixels):
    from gymnasium.utils.env_checker import check_env

    real = dreamgym.make_real(
        real_id, world_model=real_wm, obs_mode="pixels", pixels=pixels, max_episode_steps=8
    )
    dream = gym.make(real_id, world_model=real_wm, obs_mode="pixels")
    assert real.observation_space == dream.observation_space
    assert real.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert real.action_space == dream.action_space
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(real, skip_render_check=True)
    # the checker only notes that make_real's env is a wrapper of the real game
    assert [str(w.message) for w in caught if "unwrapped" not in str(w.message)] == []
    latent = dreamgym.make_real(real_id, world_model=real_wm, max_episode_steps=8)
    Z = real_wm.mdnrnn.config.z_dim
    frames, z = [real.reset(seed=3)[0]], [latent.reset(seed=3)[0][:Z]]
    for a in [real.action_space.sample() for _ in range(3)]:
        frames.append(real.step(a)[0])
        z.append(latent.step(a)[0][:Z])
        assert frames[-1] in dream.observation_space
        if pixels == "raw":  # the real frame itself
            np.testing.assert_array_equal(frames[-1], real.frame)
    if pixels == "reconstructed":  # V's decoding of the z the latent mode observes
        with torch.no_grad():
            decoded = tensor_to_frames(real_wm.vae.decode(torch.from_numpy(np.stack(z))))
        np.testing.assert_array_equal(np.stack(frames), decoded)
    real.close(), latent.close()


def test_pixel_arguments_are_checked(world_models):
    wm = world_models["doom_take_cover"]
    with pytest.raises(ValueError, match="pixels: expected one of"):
        dreamgym.make_real("DreamDoom-v0", world_model=wm, obs_mode="pixels", pixels="sharp")
    with pytest.raises(ValueError, match="only with obs_mode='pixels'"):
        dreamgym.make_real("DreamDoom-v0", world_model=wm, pixels="raw")
    with pytest.raises(ValueError, match="obs_mode: expected one of"):
        dreamgym.make_real("DreamDoom-v0", world_model=wm, obs_mode="rgb")
