"""Stable-Baselines3 in the dream: its env checker, the batched VecEnv adapter, a tiny PPO run."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_world_model

import dreamgym
from dreamgym.dream import DreamEnv
from dreamgym.games import ENV_IDS
from dreamgym.sb3 import (
    ControllerActorCritic,
    DreamCheckpoint,
    as_vec_env,
    save_policy_controller,
    set_controller,
)
from dreamgym.world_model import WorldModel

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3.common.env_checker import check_env  # noqa: E402

# CarRacing's real action space, Box([-1, 0, 0], [1, 1, 1]), is not symmetric; SB3 says so.
ACTION_SPACE_ADVICE = "symmetric and normalized Box action space"


@pytest.mark.parametrize("obs_mode", ["latent", "pixels"])
def test_sb3_check_env(dream_id, wm, obs_mode):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(DreamEnv(ENV_IDS[dream_id], world_model=wm, obs_mode=obs_mode))
    assert [str(w.message) for w in caught if ACTION_SPACE_ADVICE not in str(w.message)] == []


def test_vec_env_autoresets_like_sb3(dream_id, wm):
    venv = as_vec_env(gym.make_vec(dream_id, num_envs=4, world_model=wm, max_episode_steps=5))
    H = wm.mdnrnn.config.hidden
    assert venv.num_envs == 4
    assert venv.observation_space == DreamEnv(ENV_IDS[dream_id], world_model=wm).observation_space
    venv.seed(0)
    obs = venv.reset()
    assert obs.shape == (4, *venv.observation_space.shape)
    ended = truncated = 0
    for _ in range(12):
        obs, rewards, dones, infos = venv.step(np.stack([venv.action_space.sample()] * 4))
        assert rewards.dtype == np.float32 and dones.dtype == np.bool_ and len(infos) == 4
        for i in np.flatnonzero(dones):
            info = infos[i]
            assert info["terminal_observation"] in venv.observation_space
            assert (obs[i, -H:] == 0).all(), "a finished env returns the next episode's start"
            assert 1 <= info["episode"]["l"] <= 5
            ended += 1
            truncated += info["TimeLimit.truncated"]
        assert all(infos[i] == {} for i in np.flatnonzero(~dones))
    assert ended >= 4 and truncated >= 1


def test_vec_env_seeding_and_tau(wm):
    venv = as_vec_env(gym.make_vec(wm.game.dream_id, num_envs=3, world_model=wm))
    venv.seed(7)
    first = venv.reset()
    venv.seed(7)
    np.testing.assert_array_equal(venv.reset(), first)
    assert venv.env_method("set_tau", 0.5) == [None] * 3
    assert venv.get_attr("tau") == [0.5] * 3
    venv.set_attr("tau", 0.75)
    assert venv.get_attr("tau", indices=[1]) == [0.75]
    with pytest.raises(ValueError, match="tau"):
        venv.env_method("set_tau", -1.0)
    with pytest.raises(ValueError, match="indices"):
        venv.env_method("set_tau", 0.5, indices=[0])
    assert venv.get_attr("tau") == [0.75] * 3
    assert venv.env_is_wrapped(gym.Wrapper) == [False] * 3


def test_as_vec_env_needs_the_native_dream(world_models):
    sync = gym.make_vec(
        "DreamDoom-v0",
        num_envs=2,
        vectorization_mode="sync",
        world_model=world_models["doom_take_cover"],
    )
    with pytest.raises(TypeError, match="DreamVectorEnv"):
        as_vec_env(sync)


@pytest.mark.slow
def test_ppo_trains_in_the_dream_and_runs_in_the_real_game():
    from stable_baselines3 import PPO

    wm = tiny_world_model("doom_take_cover")
    venv = as_vec_env(gym.make_vec("DreamDoom-v0", num_envs=4, world_model=wm))
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": [16]},
    )
    model.learn(total_timesteps=256)
    assert len(model.ep_info_buffer) > 0  # episode stats reached SB3 from the batched dream

    real = dreamgym.make_real("DreamDoom-v0", world_model=wm, max_episode_steps=15)
    for episode in range(2):
        obs, _ = real.reset(seed=episode)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, _ = real.step(action)
            assert obs in real.observation_space
            done = terminated or truncated
    real.close()


def test_controller_actions_are_mapped_like_c(world_models):
    wm = world_models["car_racing"]
    dreams = gym.make_vec("DreamCarRacing-v0", num_envs=2, world_model=wm)
    venv = as_vec_env(dreams, actions="controller")
    assert venv.action_space == gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    assert as_vec_env(dreams, actions="controller", outputs=2).action_space.shape == (2,)
    seen = []
    step = venv.env.step
    venv.env.step = lambda a: seen.append(a) or step(a)  # what the dream receives
    venv.reset()
    # tanh outputs (steer, gas, brake) -> steer, (gas + 1) / 2, clip(brake, 0, 1); clipped first
    venv.step(np.array([[0.5, -1.0, -0.3], [-2.0, 0.0, 3.0]], np.float32))
    np.testing.assert_allclose(seen[0], [[0.5, 0.0, 0.0], [-1.0, 0.5, 1.0]])
    with pytest.raises(ValueError, match="actions"):
        as_vec_env(dreams, actions="tanh")
    with pytest.raises(ValueError, match="outputs"):
        as_vec_env(dreams, actions="controller", outputs=5)


@pytest.mark.parametrize("hidden", [0, 3])
def test_controller_actor_is_the_controller(dream_id, wm, hidden, tmp_path):
    from stable_baselines3 import PPO

    venv = as_vec_env(gym.make_vec(dream_id, num_envs=2, world_model=wm), actions="controller")
    bias = wm.game.controller_bias
    model = PPO(
        ControllerActorCritic, venv, n_steps=8, batch_size=16, device="cpu",
        policy_kwargs={"hidden": hidden, "bias": bias},
    )  # fmt: skip
    cfg = model.policy.controller_config
    assert (cfg.in_dim, cfg.hidden, cfg.bias) == (venv.observation_space.shape[0], hidden, bias)
    params = np.random.default_rng(0).normal(0, 0.3, cfg.num_params).astype(np.float32)
    set_controller(model.policy, params)
    np.testing.assert_array_equal(model.policy.controller_params(), params)
    save_policy_controller(model.policy, tmp_path / "c", wm.game.name, {"trainer": "ppo"})
    c = dreamgym.load_controller(tmp_path / "c")
    np.testing.assert_array_equal(c.params, params)
    assert c.info["trainer"] == "ppo"
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(action, c.outputs(obs), atol=1e-6)  # PPO's mean action is C's
    model.learn(32)
    assert not np.array_equal(model.policy.controller_params(), params)  # PPO moved C
    with pytest.raises(ValueError, match="parameters"):
        set_controller(model.policy, params[:-1])
    with pytest.raises(TypeError, match="ControllerActorCritic"):
        save_policy_controller(PPO("MlpPolicy", venv).policy, tmp_path / "m", wm.game.name)


def test_dream_checkpoint_keeps_the_best_c(world_models, tmp_path):
    from stable_baselines3 import PPO

    wm = world_models["car_racing"]
    dreams = gym.make_vec("DreamCarRacing-v0", num_envs=4, world_model=wm, max_episode_steps=10)
    venv = as_vec_env(dreams, actions="controller")
    model = PPO(ControllerActorCritic, venv, n_steps=8, batch_size=32, device="cpu", seed=0)
    check = DreamCheckpoint(wm, tmp_path / "best", every=32, trials=4, max_steps=10, verbose=0)
    model.learn(96, callback=check)
    rows = [json.loads(line) for line in (tmp_path / "best" / "metrics.jsonl").open()]
    assert [r["timesteps"] for r in rows] == [0, 32, 64, 96]  # the start, every 32, the end
    best = max(rows, key=lambda r: r["dream_score"])
    assert best["kept"] and check.best == best["dream_score"]
    c = dreamgym.load_controller(tmp_path / "best")
    assert c.info["dream_score"] == best["dream_score"]
    assert c.info["timesteps"] == best["timesteps"]
    again = check.evaluator.returns(c.params[None], 4, 0).mean()  # the same dreams score it
    assert again == pytest.approx(best["dream_score"])
    with pytest.raises(ValueError, match="starts='real'"):
        DreamCheckpoint(
            wm.__class__.create("car_racing", n_bank=2, hidden=8), tmp_path, 1, starts="real"
        )


def test_dream_checkpoint_scores_an_ensemble_by_its_worst_member(tmp_path):
    """PPO in an ensemble's dreams, kept by the member that pays least (as evolve keeps)."""
    from stable_baselines3 import PPO

    from dreamgym.mdnrnn import MDNRNN

    wm = tiny_world_model("car_racing", done_bias=-50.0)
    ends = MDNRNN(wm.mdnrnn.config)  # a member whose dreams end at once
    ends.load_state_dict(wm.mdnrnn.state_dict())
    with torch.no_grad():
        ends.head.bias[3 * wm.mdnrnn.config.n_mix * wm.mdnrnn.config.z_dim] = 50.0
    both = WorldModel(wm.game, wm.vae, wm.mdnrnn, wm.z0_mu, wm.z0_logvar, ensemble=[ends])
    dreams = gym.make_vec("DreamCarRacing-v0", num_envs=4, world_model=both, max_episode_steps=10)
    model = PPO(ControllerActorCritic, as_vec_env(dreams, actions="controller"), n_steps=8,
                batch_size=32, device="cpu", seed=0)  # fmt: skip
    check = DreamCheckpoint(both, tmp_path / "best", every=32, trials=4, max_steps=10, verbose=0)
    model.learn(32, callback=check)
    c = dreamgym.load_controller(tmp_path / "best")
    returns = check.evaluator.returns(c.params[None], 4, 0)  # (1, 4 trials x 2 members)
    means = check.evaluator.model_means(returns)[0]
    assert means[0] != means[1]
    assert c.info["dream_score"] == pytest.approx(means.min())
    rows = [json.loads(line) for line in (tmp_path / "best" / "metrics.jsonl").open()]
    assert all(r["dream_score"] == min(r["member_scores"]) for r in rows)  # each member's mean
    kept = [r for r in rows if r["kept"]][-1]
    assert kept["member_scores"] == pytest.approx(means.tolist())


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "obs_mode"), [("ppo", "latent"), ("a2c", "latent"),
                                                ("ppo", "pixels")])  # fmt: skip
def test_the_sb3_example_trains_its_recipe_and_saves_an_agent_that_loads(algo, obs_mode, tmp_path):
    """examples/sb3_ppo_dream.py as documented, with tiny sizes: PPO and A2C through one
    adapter, and a CnnPolicy on the dream's frames."""
    import subprocess
    import sys
    from pathlib import Path

    from dreamgym.agents import load_agent

    script = Path(__file__).parents[1] / "examples" / "sb3_ppo_dream.py"
    zip_path = tmp_path / f"{algo}.zip"
    args = ["--algo", algo, "--timesteps", "64", "--num-envs", "4", "--n-steps", "16",
            "--batch-size", "32", "--episodes", "0", "--save-agent", str(zip_path),
            "--obs-mode", obs_mode]  # fmt: skip
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "steps in" in out.stdout and f"agent saved to {zip_path}" in out.stdout
    env = gym.make("DreamDoom-v0", obs_mode=obs_mode)
    agent = load_agent(zip_path, env.observation_space, env.action_space)
    assert agent.algo == algo
    assert agent.obs_mode == obs_mode
    action = agent(env.reset(seed=0)[0])
    assert env.action_space.contains(np.asarray(action, np.float32).reshape(1))


@pytest.mark.slow
def test_the_sb3_example_saves_as_it_trains_and_the_same_command_continues_it(
    tmp_path, monkeypatch
):
    """With --save-agent, the agent is saved every --checkpoint-every steps; the same command
    run again continues it (its weights and Adam's state, not a new agent) to --timesteps,
    has nothing to do past them, and refuses an agent of other settings, changing nothing."""
    import importlib.util
    import io
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    from dreamgym.agents import read_sb3_data

    script = Path(__file__).parents[1] / "examples" / "sb3_ppo_dream.py"
    zip_path = tmp_path / "ppo.zip"
    args = ["--num-envs", "4", "--n-steps", "16", "--batch-size", "32", "--episodes", "0",
            "--save-agent", str(zip_path), "--checkpoint-every", "64"]  # fmt: skip

    def run(*extra):
        return subprocess.run([sys.executable, str(script), *args, *extra], capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    def tensors(name):
        with zipfile.ZipFile(zip_path) as archive:
            return torch.load(io.BytesIO(archive.read(name)), weights_only=True)

    first = run("--timesteps", "192")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "64 steps: saved to" in first.stdout and "128 steps: saved to" in first.stdout
    data = read_sb3_data(zip_path)
    assert data["num_timesteps"] == 192 and data["dream"]["tau"] == 1.15
    assert data["dream"]["hazard"] == 3.0  # Doom's recipe
    trained = tensors("policy.pth")
    again = run("--timesteps", "192")  # past --timesteps: nothing to train, nothing written
    assert again.returncode == 0 and "nothing to train" in again.stdout
    assert all(torch.equal(trained[k], v) for k, v in tensors("policy.pth").items())
    # what the script continues from: the saved weights and Adam's state, exactly
    spec = importlib.util.spec_from_file_location("sb3_ppo_dream", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(sys, "argv", ["sb3_ppo_dream.py", *args, "--timesteps", "256"])
    parsed = example.parse_args()
    dreams = gym.make_vec("DreamDoom-v0", num_envs=4)
    model = example.make_model(parsed, as_vec_env(dreams), {"log_std_init": 0.0})
    model.dream = example.dream_settings(parsed, dreams.unwrapped.world_model, 1.15)
    example.resume(model, str(zip_path))
    assert model.num_timesteps == 192
    state = model.policy.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items())
    assert model.policy.optimizer.state_dict()["state"]  # Adam's moments came along
    more = run("--timesteps", "256")
    assert more.returncode == 0, more.stderr[-2000:]
    assert f"continuing {zip_path} from 192 steps" in more.stdout
    assert read_sb3_data(zip_path)["num_timesteps"] == 256
    assert not list(tmp_path.glob("*.tmp"))
    for extra, said in ((("--n-epochs", "3"), "n_epochs=4, now n_epochs=3"),
                        (("--tau", "1.0"), "tau=1.15, now tau=1.0"),
                        (("--hazard", "2"), "hazard=3.0, now hazard=2.0")):  # fmt: skip
        wrong = run("--timesteps", "384", *extra)
        assert wrong.returncode != 0 and said in wrong.stderr.splitlines()[-1]
        assert read_sb3_data(zip_path)["num_timesteps"] == 256  # nothing changed
    # an agent saved before the hazard was recorded dreamt at 0: the recipe's 3 is refused
    with zipfile.ZipFile(zip_path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(entries["data"])
    del data["dream"]["hazard"]
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    old = run("--timesteps", "384")
    assert old.returncode != 0 and "hazard=0.0, now hazard=3.0" in old.stderr.splitlines()[-1]


def test_the_sb3_example_refuses_a_device_this_machine_lacks_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "sb3_ppo_dream.py"
    out = subprocess.run([sys.executable, str(script), "--device", "cuda:99", "--save-agent",
                          str(tmp_path / "a.zip")], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 2 and "--device: 'cuda:99'" in out.stderr.splitlines()[-1]
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "extra,said", [(("--hazard", "-1"), "hazard: expected a finite number >= 0, got -1.0"),
                   (("--hazard", "nan"), "hazard: expected a finite number >= 0, got nan")],
)  # fmt: skip
def test_the_sb3_example_refuses_a_bad_hazard_in_one_line(extra, said, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "sb3_ppo_dream.py"
    out = subprocess.run([sys.executable, str(script), *extra, "--save-agent",
                          str(tmp_path / "a.zip")], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 2 and said in out.stderr.splitlines()[-1]
    assert not list(tmp_path.iterdir())  # nothing written
