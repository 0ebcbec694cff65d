"""The dream environments: the Gymnasium contract, batching, autoreset, tau and bad input."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import DREAM_IDS, tiny_world_model
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import dreamgym
from dreamgym import dream_core as core
from dreamgym.dream import DreamEnv, DreamVectorEnv
from dreamgym.games import ENV_IDS, get_game
from dreamgym.mdnrnn import sample
from dreamgym.world_model import WorldModelError


def actions(space: gym.spaces.Box, n: int, seed: int = 0) -> list[np.ndarray]:
    space.seed(seed)
    return [space.sample() for _ in range(n)]


def rollout(env: gym.Env, acts, seed: int = 0):
    """obs, reward, terminated, truncated of every step; reset (no seed) after an episode ends."""
    out = [(env.reset(seed=seed)[0], 0.0, False, False)]
    for a in acts:
        obs, r, term, trunc, _ = env.step(a)
        out.append((obs, r, term, trunc))
        if term or trunc:
            out.append((env.reset()[0], 0.0, False, False))
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------- registration


def test_registered_ids():
    assert set(ENV_IDS) <= set(gym.registry)
    for env_id, game in ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.entry_point == "dreamgym.dream:DreamEnv"
        assert spec.vector_entry_point == "dreamgym.dream:DreamVectorEnv"
        assert spec.max_episode_steps == dreamgym.get_game(game).max_episode_steps
        assert spec.kwargs == {"game": game, "tau": get_game(game).default_tau}
    assert gym.spec("DreamDoomTakeCover-v0").kwargs["tau"] == 1.15
    assert gym.spec("DreamCarRacing-v0").kwargs["tau"] == 1.0


def test_without_shipped_weights_the_error_says_how_to_train(dream_id, tmp_path, monkeypatch):
    import dreamgym.shipped

    game = ENV_IDS[dream_id]
    monkeypatch.setattr(dreamgym.shipped, "_models_root", lambda: tmp_path)  # nothing ships
    with pytest.raises(WorldModelError) as e:
        gym.make(dream_id)
    msg = str(e.value)
    assert f"dreamgym pipeline {game} --preset cpu --run" in msg
    assert "dreamgym export runs/" in msg and f"models/{game}" in msg
    assert "world_model=" in msg


def test_shipped_dir_is_the_models_folder():
    path = dreamgym.shipped_dir("doom_take_cover")
    assert path.name == "doom_take_cover" and path.parent.name == "models"


def test_the_shipped_doom_dream_works_offline_with_the_papers_sizes():
    env = gym.make("DreamDoom-v0", tau=1.15)  # the weights in models/doom_take_cover
    wm = env.unwrapped.world_model
    assert sum(p.numel() for p in wm.vae.parameters()) == 4_446_915
    assert sum(p.numel() for p in wm.mdnrnn.parameters()) == 1_678_785
    assert wm.z0_mu.shape[0] >= 1000  # a bank of real first frames
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64 + 512 + 512,) and obs.dtype == np.float32
    steps, done = 0, False
    while not done and steps < 50:
        obs, reward, terminated, truncated, _ = env.step(np.array([0.0], np.float32))
        assert np.isfinite(obs).all() and reward == 1.0
        steps, done = steps + 1, terminated or truncated
    assert steps > 10  # standing still survives a while in the dream, as in the real game
    env.close()


# ---------------------------------------------------------------- the Gymnasium contract


@pytest.mark.parametrize("obs_mode", ["latent", "pixels"])
@pytest.mark.parametrize("render_mode", [None, "rgb_array"])
def test_check_env_without_warnings(dream_id, wm, obs_mode, render_mode):
    env = gym.make(dream_id, world_model=wm, obs_mode=obs_mode, render_mode=render_mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    env.close()


def test_latent_space_bounds(dream_id, wm):
    env = DreamEnv(ENV_IDS[dream_id], world_model=wm)
    Z, H = wm.mdnrnn.config.z_dim, wm.mdnrnn.config.hidden
    high = env.observation_space.high
    assert env.observation_space.dtype == np.float32 and np.isfinite(high).all()
    assert (high[:Z] == core.Z_BOUND).all() and (high[-H:] == 1).all()
    if wm.game.controller_reads_cell:
        assert high.shape == (Z + 2 * H,) and (high[Z : Z + H] == env.max_episode_steps).all()
        shorter = DreamEnv(ENV_IDS[dream_id], world_model=wm, max_episode_steps=10)
        longer = DreamEnv(ENV_IDS[dream_id], world_model=wm, max_episode_steps=5000)
        assert shorter.observation_space == env.observation_space
        assert (longer.observation_space.high[Z : Z + H] == 5000).all()
    else:
        assert high.shape == (Z + H,)
    assert env.action_space == wm.game.action_space


@pytest.mark.parametrize("obs_mode", ["latent", "pixels"])
def test_observations_stay_in_space(dream_id, wm, obs_mode):
    env = gym.make(dream_id, world_model=wm, obs_mode=obs_mode, render_mode="rgb_array")
    for obs, *_ in rollout(env, actions(env.action_space, 40)):
        assert obs in env.observation_space
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8


def test_same_seed_same_trajectory(dream_id, wm):
    acts = actions(gym.make(dream_id, world_model=wm).action_space, 60)
    a = rollout(gym.make(dream_id, world_model=wm), acts, seed=3)
    b = rollout(gym.make(dream_id, world_model=wm), acts, seed=3)
    c = rollout(gym.make(dream_id, world_model=wm), acts, seed=4)
    assert_same(a, b)
    assert not np.array_equal(a[0][0], c[0][0])
    assert sum(step[2] or step[3] for step in a) >= 1, "the tiny dream should end an episode"


def test_pickle_round_trip_mid_episode(dream_id, wm):
    env = gym.make(dream_id, world_model=wm, tau=0.7)
    acts = actions(env.action_space, 20)
    rollout(env, acts[:5], seed=1)
    clone = pickle.loads(pickle.dumps(env))
    assert clone.unwrapped.tau == 0.7
    for a in acts[5:]:
        x, y = env.step(a), clone.step(a)
        for u, v in zip(x[:4], y[:4], strict=True):
            np.testing.assert_array_equal(u, v)
        if x[2] or x[3]:
            np.testing.assert_array_equal(env.reset()[0], clone.reset()[0])


# ---------------------------------------------------------------- the batched dream


def test_make_vec_gives_the_native_batched_env(dream_id, wm):
    venv = gym.make_vec(
        dream_id, num_envs=3, vectorization_mode="vector_entry_point", world_model=wm
    )
    assert type(venv) is DreamVectorEnv
    assert venv.num_envs == 3 and venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.max_episode_steps == gym.spec(dream_id).max_episode_steps
    assert venv.tau == get_game(ENV_IDS[dream_id]).default_tau
    single = DreamEnv(ENV_IDS[dream_id], world_model=wm)
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    obs, _ = venv.reset(seed=0)
    assert obs in venv.observation_space
    obs, reward, term, trunc, _ = venv.step(venv.action_space.sample())
    assert obs in venv.observation_space and reward.shape == (3,) and reward.dtype == np.float32
    assert term.dtype == trunc.dtype == np.bool_


@pytest.mark.parametrize("obs_mode", ["latent", "pixels"])
def test_single_env_equals_vector_env_of_one(dream_id, wm, obs_mode):
    """Across episodes too: NEXT_STEP's restart step draws nothing but the new start."""
    kw = dict(game=ENV_IDS[dream_id], world_model=wm, obs_mode=obs_mode, max_episode_steps=9)
    single, venv = DreamEnv(**kw), DreamVectorEnv(1, **kw)
    acts = actions(single.action_space, 40)
    expected = rollout(single, acts, seed=5)
    got = [(venv.reset(seed=5)[0][0], 0.0, False, False)]
    for a in acts:
        obs, r, term, trunc, _ = venv.step(a[None])
        got.append((obs[0], float(r[0]), bool(term[0]), bool(trunc[0])))
        if term[0] or trunc[0]:  # NEXT_STEP: the next step restarts with any action
            got.append((venv.step(a[None])[0][0], 0.0, False, False))
    assert_same(expected[: len(got)], got[: len(expected)])
    assert sum(s[3] for s in expected) >= 1, "max_episode_steps=9 should truncate"


def test_same_step_autoreset_matches_single_env(dream_id, wm):
    kw = dict(game=ENV_IDS[dream_id], world_model=wm, max_episode_steps=9)
    single = DreamEnv(**kw)
    venv = DreamVectorEnv(1, autoreset_mode=AutoresetMode.SAME_STEP, **kw)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    acts = actions(single.action_space, 40)
    np.testing.assert_array_equal(single.reset(seed=2)[0], venv.reset(seed=2)[0][0])
    ended = 0
    for a in acts:
        obs, r, term, trunc, _ = single.step(a)
        vobs, vr, vterm, vtrunc, info = venv.step(a[None])
        assert (r, term, trunc) == (vr[0], vterm[0], vtrunc[0])
        if term or trunc:
            ended += 1
            assert info["_final_obs"][0] and info["_episode"][0]
            np.testing.assert_array_equal(info["final_obs"][0], obs)
            obs, _ = single.reset()
        np.testing.assert_array_equal(vobs[0], obs)
    assert ended >= 2


def test_next_step_autoreset_and_episode_stats(dream_id, wm):
    venv = DreamVectorEnv(4, ENV_IDS[dream_id], world_model=wm, max_episode_steps=6)
    venv.reset(seed=0)
    acts = actions(venv.action_space, 30)
    returns, lengths, prev_done = np.zeros(4), np.zeros(4, int), np.zeros(4, bool)
    seen = 0
    for a in acts:
        obs, r, term, trunc, info = venv.step(a)
        assert obs in venv.observation_space
        assert not (term & trunc).any()
        # restart step: reward 0, not done, fresh clock
        assert (r[prev_done] == 0).all() and not (term | trunc)[prev_done].any()
        returns[prev_done], lengths[prev_done] = 0, 0
        returns[~prev_done] += r[~prev_done]
        lengths[~prev_done] += 1
        done = term | trunc
        assert (lengths <= 6).all() and (trunc == (lengths == 6) & ~term).all()
        if done.any():
            seen += done.sum()
            np.testing.assert_array_equal(info["_episode"], done)
            np.testing.assert_allclose(info["episode"]["r"][done], returns[done], rtol=1e-6)
            np.testing.assert_array_equal(info["episode"]["l"][done], lengths[done])
            assert (info["episode"]["l"][~done] == 0).all()
        else:
            assert "episode" not in info
        prev_done = done
    assert seen >= 4


def test_truncates_exactly_at_the_limit(dream_id):
    wm = tiny_world_model(ENV_IDS[dream_id], done_bias=-1e4)  # never terminates on its own
    env = gym.make(dream_id, world_model=wm, max_episode_steps=7)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(7)]
    assert flags == [(False, False)] * 6 + [(False, True)]
    native = DreamEnv(ENV_IDS[dream_id], world_model=wm, max_episode_steps=5)
    native.reset(seed=0)
    flags = [native.step(native.action_space.sample())[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_reset_mask_restarts_only_those_dreams(dream_id, wm):
    venv = DreamVectorEnv(4, ENV_IDS[dream_id], world_model=wm)
    venv.reset(seed=0)
    acts = actions(venv.action_space, 3)
    for a in acts:
        before, *_ = venv.step(a)
    mask = np.array([True, False, True, False])
    after, info = venv.reset(options={"reset_mask": mask})
    assert info == {}
    np.testing.assert_array_equal(after[~mask], before[~mask])
    assert not np.allclose(after[mask], before[mask])
    H = wm.mdnrnn.config.hidden
    assert (after[mask, -H:] == 0).all()  # h0 = 0 in the restarted dreams


def test_disabled_autoreset_needs_reset_mask(dream_id):
    wm = tiny_world_model(ENV_IDS[dream_id], done_bias=-1e4)
    venv = DreamVectorEnv(
        2, ENV_IDS[dream_id], world_model=wm, max_episode_steps=2, autoreset_mode="disabled"
    )
    venv.reset(seed=0)
    a = venv.action_space.sample()
    venv.step(a)
    _, _, _, trunc, _ = venv.step(a)
    assert trunc.all()
    with pytest.raises(ValueError, match="reset_mask"):
        venv.step(a)
    venv.reset(options={"reset_mask": np.array([True, True])})
    venv.step(a)


def test_vector_env_seeding(dream_id, wm):
    a = DreamVectorEnv(8, ENV_IDS[dream_id], world_model=wm)
    b = DreamVectorEnv(8, ENV_IDS[dream_id], world_model=wm)
    acts = actions(a.action_space, 10)
    np.testing.assert_array_equal(a.reset(seed=9)[0], b.reset(seed=9)[0])
    for act in acts:
        x, y = a.step(act), b.step(act)
        for u, v in zip(x[:4], y[:4], strict=True):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.reset(seed=10)[0], b.reset(seed=9)[0])
    with pytest.warns(UserWarning, match="render_mode"):
        assert a.render() is None


def test_vector_render_and_pickle(dream_id, wm):
    venv = DreamVectorEnv(3, ENV_IDS[dream_id], world_model=wm, render_mode="rgb_array")
    venv.reset(seed=0)
    frames = venv.render()
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3) and frames[0].dtype == np.uint8
    clone = pickle.loads(pickle.dumps(venv))
    a = venv.action_space.sample()
    np.testing.assert_array_equal(venv.step(a)[0], clone.step(a)[0])


# ---------------------------------------------------------------- tau


def one_step_spread(wm, tau: float) -> np.ndarray:
    """Per-dimension std of z1 over 512 dreams that all start from the same z0."""
    venv = DreamVectorEnv(512, wm.game.name, world_model=wm, tau=tau)
    venv.reset(seed=0)
    obs, *_ = venv.step(np.zeros((512, wm.game.action_dim), np.float32))
    return obs[:, : wm.mdnrnn.config.z_dim].std(axis=0)


def test_spread_of_z_grows_with_tau(dream_id):
    wm = tiny_world_model(ENV_IDS[dream_id], done_bias=-1e4)
    with torch.no_grad():
        wm.z0_mu[:] = wm.z0_mu[0]
        wm.z0_logvar.fill_(-30.0)  # every dream starts from the same z0
    spreads = [one_step_spread(wm, tau).mean() for tau in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(spreads, spreads[1:], strict=False)), spreads


def test_tau_to_zero_gives_the_top_mode_mean(dream_id, wm):
    env = DreamVectorEnv(16, ENV_IDS[dream_id], world_model=wm, tau=1e-8)
    env.reset(seed=0)
    state = env._dreams.state
    a = np.zeros((16, wm.game.action_dim), np.float32)
    executed = torch.as_tensor(wm.game.executed_action(a), dtype=torch.float32)
    with torch.no_grad():
        _, out = wm.mdnrnn.step(state.lstm, state.z, executed)
    expected = sample(out.mixture, 0.0).clamp(-core.Z_BOUND, core.Z_BOUND).numpy()
    obs, *_ = env.step(a)
    np.testing.assert_allclose(obs[:, : wm.mdnrnn.config.z_dim], expected, atol=1e-3)


def test_set_tau_changes_the_dream(dream_id, wm):
    env = DreamEnv(ENV_IDS[dream_id], world_model=wm)
    env.set_tau(0.3)
    assert env.tau == 0.3
    env.tau = 2
    assert env.tau == 2.0 and isinstance(env.tau, float)
    acts = actions(env.action_space, 5)
    hot = rollout(env, acts, seed=0)
    env.set_tau(0.3)
    cold = rollout(env, acts, seed=0)
    assert not np.array_equal(hot[1][0], cold[1][0])


# ---------------------------------------------------------------- bad input


BAD_TAUS = [
    (0, ValueError),
    (-1.0, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    ("1.0", TypeError),
    (True, TypeError),
    ([1.0], TypeError),
]


@pytest.mark.parametrize("tau,error", BAD_TAUS)
def test_bad_tau(dream_id, wm, tau, error):
    with pytest.raises(error, match="tau"):
        gym.make(dream_id, world_model=wm, tau=tau)
    with pytest.raises(error, match="tau"):
        gym.make_vec(dream_id, num_envs=2, world_model=wm, tau=tau)
    env = DreamEnv(ENV_IDS[dream_id], world_model=wm, tau=0.5)
    with pytest.raises(error, match="tau"):
        env.set_tau(tau)
    with pytest.raises(error, match="tau"):
        env.tau = tau
    assert env.tau == 0.5


def bad_actions(space: gym.spaces.Box):
    good = space.sample()
    high = space.high.copy()
    return [
        (good[None], ValueError, "shape"),
        (good[:-1] if good.size > 1 else np.zeros(0, np.float32), ValueError, "shape"),
        (np.ones(space.shape, np.int64), TypeError, "float"),
        (np.ones(space.shape, bool), TypeError, "float"),
        (np.full(space.shape, "a"), TypeError, "float"),
        (np.full(space.shape, np.nan, np.float32), ValueError, "finite"),
        (np.full(space.shape, np.inf, np.float32), ValueError, "finite"),
        (high + 0.5, ValueError, r"out of range.*Box"),
        (space.low - 0.5, ValueError, r"out of range.*Box"),
        ("left", ValueError, "shape"),
    ]


def test_bad_actions_leave_the_dream_untouched(dream_id, wm):
    env = DreamEnv(ENV_IDS[dream_id], world_model=wm)
    twin = DreamEnv(ENV_IDS[dream_id], world_model=wm)
    env.reset(seed=0), twin.reset(seed=0)
    for action, error, match in bad_actions(env.action_space):
        with pytest.raises(error, match=match):
            env.step(action)
    a = env.action_space.sample()
    for x, y in zip(env.step(a)[:4], twin.step(a)[:4], strict=True):
        np.testing.assert_array_equal(x, y)
    env.step([float(v) for v in a])  # a list of Python floats is fine
    env.step(a.astype(np.float64))  # and so is float64


def test_bad_actions_vector(dream_id, wm):
    venv = DreamVectorEnv(3, ENV_IDS[dream_id], world_model=wm)
    twin = DreamVectorEnv(3, ENV_IDS[dream_id], world_model=wm)
    venv.reset(seed=0), twin.reset(seed=0)
    good = venv.action_space.sample()
    nan = good.copy()
    nan[1, 0] = np.nan
    wide = good.copy()
    wide[2, -1] = 7.0
    for action, error, match in [
        (good[0], ValueError, r"shape \(3, "),
        (good.astype(np.int32), TypeError, "float"),
        (nan, ValueError, "finite"),
        (wide, ValueError, "out of range"),
    ]:
        with pytest.raises(error, match=match):
            venv.step(action)
    for x, y in zip(venv.step(good)[:4], twin.step(good)[:4], strict=True):
        np.testing.assert_array_equal(x, y)


def test_step_before_reset():
    env = DreamEnv("car_racing", world_model=tiny_world_model("car_racing"))
    with pytest.raises(gym.error.ResetNeeded):
        env.step(env.action_space.sample())


@pytest.mark.parametrize(
    "num_envs,error", [(0, ValueError), (-3, ValueError), (1.5, TypeError), ("4", TypeError)]
)
def test_bad_num_envs(dream_id, wm, num_envs, error):
    with pytest.raises(error, match="num_envs"):
        gym.make_vec(dream_id, num_envs=num_envs, world_model=wm)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"obs_mode": "rgb"}, ValueError, "obs_mode"),
        ({"obs_mode": None}, ValueError, "obs_mode"),
        ({"render_mode": "human"}, ValueError, "render_mode"),
        ({"max_episode_steps": 0}, ValueError, "max_episode_steps"),
        ({"world_model": 42}, TypeError, "world_model"),
        ({"starts": "middle"}, ValueError, "starts"),
        ({"starts": "real"}, ValueError, "no bank of real states"),
    ],
)
def test_bad_constructor_arguments(dream_id, wm, kwargs, error, match):
    kwargs = {"world_model": wm, **kwargs}
    with pytest.raises(error, match=match):
        DreamEnv(ENV_IDS[dream_id], **kwargs)
    with pytest.raises(error, match=match):
        DreamVectorEnv(2, ENV_IDS[dream_id], **kwargs)


def test_bad_autoreset_mode(wm):
    with pytest.raises(ValueError, match="autoreset_mode"):
        DreamVectorEnv(2, wm.game.name, world_model=wm, autoreset_mode="sometimes")


def test_world_model_of_the_other_game(world_models):
    with pytest.raises(ValueError, match="world_model"):
        gym.make("DreamDoom-v0", world_model=world_models["car_racing"])


def test_missing_and_corrupt_world_model_folders(tmp_path, world_models):
    with pytest.raises(WorldModelError, match="not found"):
        gym.make("DreamCarRacing-v0", world_model=tmp_path / "nowhere")
    folder = world_models["car_racing"].save(tmp_path / "car")
    gym.make("DreamCarRacing-v0", world_model=folder)  # loads
    with pytest.raises(WorldModelError, match="doom_take_cover"):
        gym.make("DreamDoom-v0", world_model=folder)
    weights = folder / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(WorldModelError, match="weights.safetensors"):
        gym.make("DreamCarRacing-v0", world_model=str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WorldModelError, match="config.json"):
        gym.make_vec("DreamCarRacing-v0", num_envs=2, world_model=folder)


@pytest.mark.parametrize(
    "mask,error",
    [
        ([True, False], TypeError),
        (np.array([1, 0]), TypeError),
        (np.array([True, False, True]), ValueError),
        (np.array([False, False]), ValueError),
    ],
)
def test_bad_reset_mask(wm, mask, error):
    venv = DreamVectorEnv(2, wm.game.name, world_model=wm)
    with pytest.raises(ValueError, match="first reset"):
        venv.reset(options={"reset_mask": np.array([True, False])})
    obs, _ = venv.reset(seed=0)
    with pytest.raises(error, match="reset_mask"):
        venv.reset(options={"reset_mask": mask})
    a = venv.action_space.sample()
    twin = DreamVectorEnv(2, wm.game.name, world_model=wm)
    twin.reset(seed=0)
    np.testing.assert_array_equal(venv.step(a)[0], twin.step(a)[0])


def test_ids_cover_every_game():
    assert {ENV_IDS[i] for i in DREAM_IDS} == set(dreamgym.GAMES)
