"""Your own game: a small pixel env with discrete actions, defined here in plain numpy,
as a GameSpec, a dream, a registered id and a real game; and the whole pipeline on it
through the CLI."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import dreamgym
from dreamgym.envs import game_from_config, game_spec, resolve_game
from dreamgym.games import ENV_IDS, GAMES, register_game
from dreamgym.world_model import WorldModel

HERE = Path(__file__).parent
SOURCE = "test_own_game:tiny_catch"  # how the CLI and worker processes find the game


class TinyCatch(gym.Env):
    """A ball falls down a 32x32 screen one 4-pixel row a step; the paddle at the bottom
    moves left, stays or moves right (``Discrete(3)``) and catches it for +1."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None):
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (32, 32, 3), np.uint8)
        self.action_space = spaces.Discrete(3)
        self.ball, self.paddle = [0, 0], 3

    def _frame(self) -> np.ndarray:
        frame = np.zeros((32, 32, 3), np.uint8)
        row, col = self.ball
        frame[4 * row : 4 * row + 4, 4 * col : 4 * col + 4] = (255, 220, 0)
        frame[30:32, 4 * self.paddle : 4 * self.paddle + 4] = (0, 128, 255)
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.ball, self.paddle = [0, int(self.np_random.integers(8))], 3
        return self._frame(), {}

    def step(self, action):
        self.paddle = int(np.clip(self.paddle + int(action) - 1, 0, 7))
        self.ball[0] += 1
        terminated = self.ball[0] == 7
        reward = float(terminated and self.ball[1] == self.paddle)
        return self._frame(), reward, terminated, False, {}

    def render(self):
        return self._frame() if self.render_mode == "rgb_array" else None


def tiny_catch() -> dreamgym.GameSpec:
    """The game: defaults from the env, a short episode limit and small nets."""
    return game_spec(TinyCatch, name="tiny_catch", max_episode_steps=20, hidden=32)


@pytest.fixture
def registry():
    """Leave GAMES, ENV_IDS and Gymnasium's registry as the test found them. Ids that a
    package registered when a test first imported it (minigrid's) stay: a second
    import would not register them again."""
    games, ids, gyms = dict(GAMES), dict(ENV_IDS), set(gym.registry)
    yield
    for table, saved in ((GAMES, games), (ENV_IDS, ids)):
        table.clear()
        table.update(saved)
    for env_id in set(gym.registry) - gyms:
        if str(gym.registry[env_id].entry_point).startswith("dreamgym."):
            del gym.registry[env_id]


def tiny_folder(tmp_path: Path) -> Path:
    """A random world model of tiny_catch, saved with its source."""
    torch.manual_seed(0)
    spec = resolve_game(SOURCE)
    wm = WorldModel.create(spec, n_bank=3, hidden=16)
    return wm.save(tmp_path / "tiny_catch")


def test_spec_derived_from_the_env(registry):
    spec = resolve_game(SOURCE)
    assert spec.name == "tiny_catch" and spec.dream_id == "DreamTinyCatch-v0"
    assert spec.source == SOURCE and GAMES["tiny_catch"] is spec
    assert spec.action_space == spaces.Discrete(3)
    assert (spec.discrete, spec.action_dim, spec.env_action_dim) == (3, 3, 1)
    assert spec.controller_outputs == (3,) and spec.models_reward
    assert spec.max_episode_steps == 20 and spec.render_fps == 10
    env = spec.make_real(max_episode_steps=5)
    frame, _ = env.reset(seed=1)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    # M reads the one-hot; C's outputs act by their argmax
    y = torch.tensor([[0.1, 0.9, -0.3], [0.5, -1.0, 0.2]])
    a = spec.controller_to_action(y)
    assert a.tolist() == [[1], [0]]
    assert spec.executed_action(a).tolist() == [[0, 1, 0], [1, 0, 0]]
    assert spec.executed_action(np.array([[2.0]])).tolist() == [[0, 0, 1]]
    # it travels to worker processes as its source
    assert pickle.loads(pickle.dumps(spec)) is spec
    assert resolve_game(SOURCE) is spec and resolve_game("tiny_catch") is spec


def test_continuous_env_scales_tanh_into_the_box(registry):
    class Reach(TinyCatch):
        def __init__(self, render_mode=None):
            super().__init__(render_mode)
            self.action_space = spaces.Box(
                np.array([0.0, -2.0], np.float32), np.array([1.0, 2.0], np.float32)
            )

    spec = game_spec(Reach, name="reach")
    assert not spec.discrete and spec.action_space.shape == (2,)
    out = spec.controller_to_action(torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))
    assert out.tolist() == [[0.0, 2.0], [0.5, 0.0]]


def test_bad_games_fail_in_one_line(registry):
    with pytest.raises(ValueError, match="unknown game 'NoSuchGame-v9'"):
        resolve_game("NoSuchGame-v9")
    with pytest.raises(ValueError, match="cannot import 'no_such_module:x'"):
        resolve_game("no_such_module:x")
    with pytest.raises(ValueError, match="expected a GameSpec"):
        resolve_game("test_own_game:TinyCatch.metadata")

    class Pairs(TinyCatch):
        def __init__(self, render_mode=None):
            super().__init__(render_mode)
            self.action_space = spaces.MultiDiscrete([2, 2])

    class Numbers(TinyCatch):
        metadata = {"render_modes": []}

        def __init__(self, render_mode=None):
            super().__init__(render_mode)
            self.observation_space = spaces.Box(-1, 1, (4,), np.float32)

    with pytest.raises(ValueError, match=r"action space MultiDiscrete\(\[2 2\]\) is not supported"):
        game_spec(Pairs, name="pairs")
    with pytest.raises(ValueError, match="dreamgym needs pixels"):
        game_spec(Numbers, name="numbers")
    spec = resolve_game(SOURCE)
    with pytest.raises(ValueError, match="already registered"):
        register_game(spec.replace(source=None, max_episode_steps=7))
    with pytest.raises(ValueError, match="key 'game' is 'nope'"):
        game_from_config({"game": "nope"})


def test_registered_dream_passes_check_env(registry, tmp_path):
    folder = tiny_folder(tmp_path)
    assert json.loads((folder / "config.json").read_text())["game_source"] == SOURCE
    env_id = dreamgym.register(folder)
    assert env_id == "DreamTinyCatch-v0" and dreamgym.register(folder) == env_id
    env = gym.make(env_id)
    assert env.action_space == spaces.Discrete(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    for bad, error in ((3, ValueError), (1.0, TypeError), (np.array([1]), ValueError)):
        with pytest.raises(error, match="action"):
            env.step(bad)
    venv = gym.make_vec(env_id, num_envs=4)
    obs, _ = venv.reset(seed=0)
    obs, reward, *_ = venv.step(np.array([0, 1, 2, 1]))
    assert obs.shape == (4, 16 + 32) and reward.dtype == np.float32
    real = dreamgym.make_real(env_id)
    assert real.observation_space == env.observation_space
    assert real.action_space == env.action_space
    obs, _ = real.reset(seed=0)
    obs, reward, *_ = real.step(2)
    assert real.observation_space.contains(obs)
    with pytest.raises(ValueError, match="already registered"):
        dreamgym.register(tiny_folder(tmp_path / "other"))


def test_sb3_sees_a_discrete_action_space(registry, tmp_path):
    pytest.importorskip("stable_baselines3")
    from dreamgym.sb3 import as_vec_env

    env_id = dreamgym.register(tiny_folder(tmp_path))
    for actions in ("env", "controller"):
        venv = as_vec_env(gym.make_vec(env_id, num_envs=2), actions=actions)
        assert venv.action_space == spaces.Discrete(3)
        venv.reset()
        venv.step(np.array([0, 2]))


def test_a_discrete_sb3_agent_is_scored_in_dreams_and_the_real_game(registry, tmp_path):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from dreamgym.sb3 import as_vec_env
    from dreamgym.transfer import score_transfer

    folder = tiny_folder(tmp_path)
    env_id = dreamgym.register(folder)
    model = PPO("MlpPolicy", as_vec_env(gym.make_vec(env_id, num_envs=2)), n_steps=8,
                batch_size=16, seed=0, device="cpu")  # fmt: skip
    model.save(tmp_path / "agent.zip")
    report = score_transfer(tmp_path / "agent.zip", env_id, episodes=2, world_model=folder)
    assert report["algo"] == "ppo" and report["kind"] == "sb3"
    assert len(report["real"]["returns"]) == 2 and len(report["dream"]["returns"]) == 2
    assert set(report["real"]["returns"]) <= {0.0, 1.0}  # tiny_catch pays 1 for a catch, else 0


def test_fixed_policies_of_a_discrete_game_play_dreams_and_the_real_game(registry, tmp_path):
    """The honesty panel's fixed policies: indices in range, held, and played both ways."""
    from dreamgym.train.cross_dream import FixedPolicy, cross_dream_returns
    from dreamgym.train.panel import play_fixed

    wm = WorldModel.load(tiny_folder(tmp_path))
    spec, rng = wm.game, np.random.default_rng(0)
    act = FixedPolicy("random", max_hold=2).actor(spec, 4, rng)
    a = np.stack([act(np.arange(4)) for _ in range(40)])  # (T, 4, 1) action indices
    assert a.shape == (40, 4, 1) and set(np.unique(a)) == {0.0, 1.0, 2.0}
    assert FixedPolicy("constant", (2.0,)).actor(spec, 3, rng)(np.arange(3)).tolist() == [[2.0]] * 3
    for bad in ((3.0,), (1.5,), (0.0, 1.0)):
        with pytest.raises(ValueError, match="action"):
            FixedPolicy("constant", bad).actor(spec, 1, rng)
    for policy in (FixedPolicy("constant", (1.0,)), FixedPolicy("random")):
        ret, how = cross_dream_returns(wm, policy, 6, 1.0, torch.Generator().manual_seed(0))
        assert how is None and ret.shape == (6,)
        real = play_fixed(spec, policy, range(3), spec.max_episode_steps)
        assert real.shape == (3,) and set(real) <= {0.0, 1.0}
    # worker processes play the same episodes, each seed's own (the random policy's holds too)
    policy, seen = FixedPolicy("random", max_hold=3), []
    alone = play_fixed(spec, policy, range(10, 18), spec.max_episode_steps)
    pooled = play_fixed(spec, policy, range(10, 18), spec.max_episode_steps, workers=2,
                        progress=seen.append)  # fmt: skip
    np.testing.assert_array_equal(pooled, alone)
    assert seen == [1] * 8


def cli(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "dreamgym.cli", *map(str, args)],
        capture_output=True, text=True, env=env, check=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_own_game_end_to_end_through_cli(registry, tmp_path):
    """Collect, V, M, C by CMA-ES in the dream, a real score; export, register, check_env."""
    run, dest = tmp_path / "run", tmp_path / "tiny_catch"
    cli("pipeline", SOURCE, "--preset", "tiny", "--run", run)
    assert json.loads((run / "run.json").read_text())["game_source"] == SOURCE
    (evolve,) = [p for p in run.iterdir() if p.name.startswith("evolve-")]
    report = json.loads((evolve / "evaluate_real.json").read_text())
    assert len(report["returns"]) == 2 and np.isfinite(report["mean"])
    cli("export", run, dest, "--controller", evolve)
    env_id = dreamgym.register(dest)
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    policy = dreamgym.load_controller(env_id)
    real = dreamgym.make_real(env_id)
    obs, _ = real.reset(seed=0)
    action = policy(obs)
    assert action.shape == () and real.action_space.contains(action)
    real.step(action)
    out = cli(
        "evaluate", dest, "--episodes", "3", "--workers", "1", "--output", tmp_path / "r.json"
    )
    assert len(json.loads((tmp_path / "r.json").read_text())["returns"]) == 3, out.stdout


def test_scaled_presets_make_every_stage(registry):
    from dreamgym.cli import PIPELINE, _stages, load_preset

    stages = _stages()
    for preset in ("tiny", "cpu", "paper"):
        cfg = load_preset(SOURCE, preset)
        for name in PIPELINE:
            kwargs = cfg[name.replace("-", "_")]
            stages[name][0](**({**kwargs, "game": SOURCE} if name == "collect" else kwargs))
    assert load_preset(SOURCE, "tiny")["evolve"]["max_steps"] == 20  # the game's limit
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_preset(SOURCE, "huge")


def test_folders_in_dreamgym_models_register_on_import(registry, tmp_path):
    folder = tiny_folder(tmp_path)
    code = "import gymnasium as gym, dreamgym; print(gym.make('DreamTinyCatch-v0').action_space)"
    env = {**os.environ, "DREAMGYM_MODELS": f"{folder}{os.pathsep}{tmp_path / 'missing'}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "Discrete(3)", out.stderr
    assert "missing not registered" in out.stderr  # a bad folder warns; the import goes on


@pytest.mark.slow
def test_shipped_minigrid_model_loads_and_scores_as_its_report(registry, tmp_path):
    """The third game's shipped folder: registered by name, check_env, and the real
    returns of its report (minigrid is in the ``all`` extra)."""
    env_id = dreamgym.register("minigrid_empty_5x5")
    assert env_id == "DreamMiniGridEmpty5x5-v0"
    env = gym.make(env_id)
    assert env.action_space == spaces.Discrete(7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    assert dreamgym.make_real(env_id).observation_space == env.observation_space
    out = tmp_path / "real.json"
    cli("evaluate", "minigrid_empty_5x5", "--episodes", 5, "--workers", 1, "--output", out)
    shipped = dreamgym.shipped_dir("minigrid_empty_5x5") / "evaluate_real.json"
    expected = json.loads(shipped.read_text())["returns"][:5]
    assert json.loads(out.read_text())["returns"] == expected


def test_minigrid_honesty_panel_replays_its_cached_real_scores(registry, tmp_path):
    """The discrete game's panel loads (its controllers see through the shipped folder),
    and a fixed policy replays the real returns cached in ``real_scores.json``."""
    from dreamgym.train.panel import REAL_SCORES_FILE, RealScores, load_panel, real_returns

    dreamgym.register("minigrid_empty_5x5")
    panel = Path(__file__).parents[1] / "benchmarks" / "panel" / "minigrid_empty_5x5"
    spec, entries = load_panel(panel, panel.parents[2])
    assert spec.discrete == 7 and len(entries) >= 8
    cache = RealScores(panel / REAL_SCORES_FILE)
    random = next(e for e in entries if e.name == "random")
    cached, hit = real_returns(random, spec, cache, 100)
    assert hit and cached.shape == (100,)
    fresh = RealScores(tmp_path / REAL_SCORES_FILE)  # nothing cached: play the first 10 seeds again
    again, hit = real_returns(random, spec, fresh, 10, play=True)
    assert not hit and np.allclose(again, cached[:10])
