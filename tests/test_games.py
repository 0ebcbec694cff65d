"""The real games: declared spaces and dtypes, seeding, episode limits, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamgym import GAMES, get_game, make_game
from dreamgym._deps import require
from dreamgym.games import resize_frame

torch.set_num_threads(1)


def test_unknown_game_lists_the_names():
    with pytest.raises(ValueError, match="pong") as info:
        make_game("pong")
    for name in GAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="doom_take_cover"):
        get_game("DreamDoom-v0")


def test_get_game_passes_a_spec_through():
    spec = GAMES["car_racing"]
    assert get_game(spec) is spec and get_game("car_racing") is spec


def test_missing_optional_dependency_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'dreamgym\[doom\]'"):
        require("dreamgym_no_such_module", "doom")


@pytest.mark.parametrize("shape", [(120, 160, 3), (84, 96, 3), (64, 64, 3)])
def test_resize_frame(shape):
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = resize_frame(frame)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    flat = np.full(shape, 77, np.uint8)
    assert np.all(resize_frame(flat) == 77)


def test_spec_action_spaces():
    doom, car = GAMES["doom_take_cover"].action_space, GAMES["car_racing"].action_space
    assert doom.shape == (1,) and doom.dtype == np.float32
    np.testing.assert_array_equal(doom.low, [-1]) and np.testing.assert_array_equal(doom.high, [1])
    assert car.shape == (3,) and car.dtype == np.float32
    np.testing.assert_array_equal(car.low, [-1, 0, 0])
    np.testing.assert_array_equal(car.high, [1, 1, 1])


def check_step(env, obs, spec, n_steps: int, rng: np.random.Generator):
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert env.observation_space.shape == (64, 64, 3)
    assert env.observation_space.dtype == np.uint8
    assert env.action_space == spec.action_space
    for _ in range(n_steps):
        a = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(a)
        assert env.observation_space.contains(obs)
        assert isinstance(reward, float)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        assert isinstance(info, dict)
        if terminated or truncated:
            break
    return obs


# ---------------------------------------------------------------- Doom

LIMIT = 12  # a short episode limit; the view first changes with the action after 8 tics


@pytest.fixture(scope="module")
def doom():
    pytest.importorskip("vizdoom", reason="install dreamgym[doom]")
    env = make_game("doom_take_cover", max_episode_steps=LIMIT, render_mode="rgb_array")
    yield env
    env.close()


def play(env, seed: int, actions) -> tuple[list[np.ndarray], list[float], list[bool]]:
    obs, _ = env.reset(seed=seed)
    frames, rewards, ends = [obs], [], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(np.array([a], np.float32))
        frames.append(obs)
        rewards.append(r)
        ends.append((term, trunc))
        if term or trunc:
            break
    return frames, rewards, ends


@pytest.mark.slow
def test_doom_resets_and_steps_in_the_declared_spaces(doom):
    obs, info = doom.reset(seed=0)
    assert isinstance(info, dict)
    check_step(doom, obs, GAMES["doom_take_cover"], 4, np.random.default_rng(0))
    frame = doom.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


@pytest.mark.slow
def test_doom_same_seed_same_episode():
    pytest.importorskip("vizdoom", reason="install dreamgym[doom]")
    env = make_game("doom_take_cover", max_episode_steps=60)
    actions = np.random.default_rng(0).uniform(-1, 1, 60)
    try:
        f1, r1, e1 = play(env, 7, actions)
        f2, r2, e2 = play(env, 7, actions)
        f3, _, _ = play(env, 8, actions)
    finally:
        env.close()
    assert r1 == r2 and e1 == e2 and len(f1) == len(f2)
    np.testing.assert_array_equal(np.stack(f1), np.stack(f2))
    assert not np.array_equal(np.stack(f1), np.stack(f3))  # the seed reaches the game


@pytest.mark.slow
def test_doom_truncates_at_max_episode_steps(doom):
    frames, rewards, ends = play(doom, 1, [0.0] * 20)
    assert len(rewards) == LIMIT  # the env's limit, well before the fireballs land
    assert rewards == [1.0] * LIMIT  # +1 per tic alive
    assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1])


@pytest.mark.slow
def test_doom_moves_left_and_right(doom):
    """The action mapping reaches the game: moving changes the view differently each way."""
    left, _, _ = play(doom, 3, [-1.0] * LIMIT)
    stay, _, _ = play(doom, 3, [0.0] * LIMIT)
    right, _, _ = play(doom, 3, [1.0] * LIMIT)
    assert not np.array_equal(left[-1], right[-1])
    assert not np.array_equal(left[-1], stay[-1]) and not np.array_equal(right[-1], stay[-1])


# ---------------------------------------------------------------- CarRacing


@pytest.mark.slow
def test_car_racing_resets_and_steps_in_the_declared_spaces():
    pytest.importorskip("Box2D", reason="install dreamgym[carracing]")
    env = make_game("car_racing", max_episode_steps=3)
    try:
        obs, info = env.reset(seed=0)
        assert isinstance(info, dict)
        check_step(env, obs, GAMES["car_racing"], 3, np.random.default_rng(0))
        obs2, _ = env.reset(seed=0)
        np.testing.assert_array_equal(obs, obs2)
        ends = [env.step(np.array([0.0, 0.5, 0.0], np.float32))[3] for _ in range(3)]
        assert ends == [False, False, True]  # truncated at max_episode_steps
    finally:
        env.close()


@pytest.mark.slow
def test_car_racing_draws_the_same_pixels_as_gymnasium_s_own():
    """Our road drawing is vectorised; the raw 96x96 frames must be gymnasium's, bit for bit."""
    pytest.importorskip("Box2D", reason="install dreamgym[carracing]")
    import gymnasium as gym

    from dreamgym.train.policies import car_track_policy

    ours, theirs = make_game("car_racing").unwrapped, gym.make("CarRacing-v3").unwrapped
    assert type(ours) is not type(theirs)
    policy = car_track_policy(np.random.default_rng(5))  # turns, swerves, some grass
    try:
        a, _ = ours.reset(seed=5)
        b, _ = theirs.reset(seed=5)
        for _ in range(120):
            np.testing.assert_array_equal(a, b)
            action = policy(resize_frame(np.ascontiguousarray(a[:84])))
            a, ra, *_ = ours.step(action)
            b, rb, *_ = theirs.step(action)
            assert ra == rb
        np.testing.assert_array_equal(a, b)
    finally:
        ours.close()
        theirs.close()


# ---------------------------------------------------------------- the demo (the README's main job)


@pytest.mark.slow
def test_demo_trains_in_the_dream_scores_in_real_doom_and_writes_its_files(
    tmp_path, capsys, world_models
):
    pytest.importorskip("vizdoom", reason="install dreamgym[doom]")
    pytest.importorskip("matplotlib", reason="install dreamgym[viz]")
    from PIL import Image

    from dreamgym import demo

    wm_dir = world_models["doom_take_cover"].save(tmp_path / "wm")
    out = tmp_path / "demo"
    args = ["--out", str(out), "--world-model", str(wm_dir), "--minutes", "0.02",
            "--episodes", "2", "--popsize", "4", "--trials", "2", "--gif-steps", "6"]  # fmt: skip
    summary = demo.main(args)
    assert summary["cma_es"]["generations"] >= 1
    assert set(summary["real"]) == {"this run (CMA-ES in the dream)", "random policy"}
    for scores in summary["real"].values():
        assert len(scores["returns"]) == 2 and all(r >= 1 for r in scores["returns"])
    table = capsys.readouterr().out
    assert "random policy" in table and "1092 ± 556" in table
    with Image.open(out / "side_by_side.gif") as gif:
        assert gif.size == (2 * (3 * 64 + 2 * 2), 2 * 64 + 14)
        assert gif.n_frames >= 2
    with Image.open(out / "cma_curve.png") as png:
        assert png.size[0] > 100
    (evolved,) = out.glob("evolve-*")  # named as `dreamgym evolve` names its folders
    assert (evolved / "controller.safetensors").is_file()
    assert json.loads((out / "summary.json").read_text())["real_episodes"] == 2
    # a rerun continues the same CMA-ES run
    again = demo.main(args)
    assert again["cma_es"]["generations"] > summary["cma_es"]["generations"]


def test_collection_policies_by_name():
    from dreamgym.train.policies import COLLECT_POLICIES, make_collect_policy

    car = GAMES["car_racing"]
    frame = np.full((64, 64, 3), 105, np.uint8)  # all road
    gas = {}
    for name in ("track", "fast_track"):
        runs = [make_collect_policy(car, np.random.default_rng(s), name) for s in range(20)]
        gas[name] = np.array([[p(frame)[1] for _ in range(50)] for p in runs]).mean()
    assert gas["fast_track"] > 0.7 > 0.4 > gas["track"]
    default = make_collect_policy(car, np.random.default_rng(3))
    track = make_collect_policy(car, np.random.default_rng(3), "track")
    assert all(np.array_equal(default(frame), track(frame)) for _ in range(30))
    with pytest.raises(ValueError, match="fast_track"):
        make_collect_policy(car, np.random.default_rng(0), "slow")
    with pytest.raises(ValueError, match="random"):
        make_collect_policy(GAMES["doom_take_cover"], np.random.default_rng(0), "track")
    with pytest.raises(ValueError, match="game's state"):
        make_collect_policy(car, np.random.default_rng(0), "drive")
    with pytest.raises(ValueError, match="game's state"):
        make_collect_policy(car, np.random.default_rng(0), "explore")
    assert set(COLLECT_POLICIES["car_racing"]) == {"track", "fast_track", "drive", "explore"}


def test_output_noise_leaves_a_released_pedal_released_and_action_noise_does_not():
    from dreamgym.controller import Controller
    from dreamgym.policy import ControllerPolicy
    from dreamgym.train.policies import noisy_controller

    car = GAMES["car_racing"]
    c = Controller(in_dim=4, out_dim=3)
    with torch.no_grad():
        c.bias.copy_(torch.tensor([0.0, 0.0, -5.0]))  # steady gas 0.5, the brake released
    policy = ControllerPolicy(c, car, {})
    obs = np.zeros(4, np.float32)
    acts = {}
    for space in ("action", "output"):
        noisy = noisy_controller(policy, car, np.random.default_rng(0), 0.3, space)
        acts[space] = np.array([noisy(obs) for _ in range(400)])
        assert all(car.action_space.contains(a) for a in acts[space])
        assert 0.1 < acts[space][:, 0].std() < 0.5  # the steering is noisy either way
    assert np.all(acts["output"][:, 2] == 0)
    assert 0.3 < (acts["action"][:, 2] > 0).mean() < 0.7  # clipped noise presses it often
    assert acts["output"][:, 1].std() == pytest.approx(0.15, rel=0.2)  # gas = (y + 1) / 2
    with pytest.raises(ValueError, match="noise_space"):
        noisy_controller(policy, car, np.random.default_rng(0), 0.3, "latent")


@pytest.mark.slow
def test_drive_policy_collects_tiles_and_its_settings_steer_it():
    """The state-reading driver earns tiles on a real track, more at its best settings
    (no noise, no swerves) than with settings drawn for collection; ``explore`` takes
    it off its line with held wheel, throttle and brake."""
    from dreamgym.train.policies import car_drive_policy, make_collect_policy

    car = GAMES["car_racing"]
    env = car.make_real(max_episode_steps=300)
    try:
        returns = {}
        for name, make in {
            "drawn": lambda rng: make_collect_policy(car, rng, "drive", env=env),
            "best": lambda rng: car_drive_policy(
                env, rng, look=6, gain=1.5, vmax=200, gas=0.5, noise=0, swerve_p=0
            ),
            "explore": lambda rng: make_collect_policy(car, rng, "explore", env=env),
        }.items():
            policy = make(np.random.default_rng(1))
            obs, _ = env.reset(seed=1)
            total, done, actions = 0.0, False, []
            while not done:
                actions.append(policy(obs))
                obs, r, term, trunc, _ = env.step(actions[-1])
                total += r
                done = term or trunc
            returns[name] = total
            if name == "explore":
                a = np.array(actions)
                held = (a[1:] == a[:-1]).all(axis=1).mean()  # steps of a held swerve
                assert held > 0.2 and np.unique(a[:, 1]).size >= 4, held  # drawn throttles
        assert returns["best"] > 250 and returns["drawn"] > 100, returns  # 345 and 214
        with pytest.raises(ValueError, match="unknown settings"):
            car_drive_policy(env, np.random.default_rng(0), speed=3)
    finally:
        env.close()
