"""Any agent's transfer: SB3 zips loaded without unpickling, scored in dreams and real games."""

from __future__ import annotations

import base64
import io
import json
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_world_model

from dreamgym import cli
from dreamgym.agents import AgentError, load_agent
from dreamgym.policy import controller_config, save_controller
from dreamgym.reports import summary, t_quantile
from dreamgym.transfer import score_dreams, score_transfer

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO  # noqa: E402

from dreamgym.sb3 import as_vec_env  # noqa: E402


def ppo(wm, obs_mode: str = "latent", steps: int = 0, **kwargs) -> PPO:
    """A tiny PPO in ``wm``'s dream, trained for ``steps`` steps (0: as initialised)."""
    dreams = gym.make_vec(
        wm.game.dream_id, num_envs=4, world_model=wm, obs_mode=obs_mode, max_episode_steps=20
    )
    policy = "CnnPolicy" if obs_mode == "pixels" else "MlpPolicy"
    model = PPO(
        policy, as_vec_env(dreams, **kwargs), n_steps=32, batch_size=64, n_epochs=1, seed=0,
        device="cpu", policy_kwargs={} if obs_mode == "pixels" else {"net_arch": [16]},
    )  # fmt: skip
    if steps:
        model.learn(steps)
    return model


@pytest.fixture(scope="module")
def doom(tmp_path_factory):
    """A tiny Doom world model on disk, a PPO trained 256 steps in its dream, and a CNN PPO."""
    root = tmp_path_factory.mktemp("doom")
    wm = tiny_world_model("doom_take_cover")
    wm.save(root / "wm")
    (root / "agents").mkdir()
    model = ppo(wm, steps=256)
    model.save(root / "agents" / "ppo_mlp.zip")
    cnn = ppo(wm, "pixels")
    cnn.save(root / "agents" / "ppo_cnn.zip")
    return wm, root, model, cnn


def spaces(wm, obs_mode="latent"):
    env = gym.make(wm.game.dream_id, world_model=wm, obs_mode=obs_mode, max_episode_steps=12)
    return env.observation_space, env.action_space


def files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_t_quantiles_and_the_confidence_interval():
    for df, t in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (99, 1.9842), (10**6, 1.9600)]:
        assert t_quantile(0.975, df) == pytest.approx(t, abs=2e-4)
    s = summary([1.0, 2.0, 6.0])
    half = 4.302653 * np.std([1, 2, 6], ddof=1) / np.sqrt(3)
    assert s["ci95"] == pytest.approx([3 - half, 3 + half], abs=1e-3)
    assert (s["mean"], s["min"], s["max"], s["returns"]) == (3.0, 1.0, 6.0, [1.0, 2.0, 6.0])
    assert summary([5.0])["ci95"] is None


@pytest.mark.slow
def test_evaluate_scores_saved_sb3_agents_and_a_controller(doom, capsys):
    pytest.importorskip("vizdoom")
    wm, root, model, cnn = doom
    agents = root / "agents"
    controller = save_controller(
        agents / "c", np.random.default_rng(0).normal(0, 0.3, controller_config(wm).num_params),
        wm.game, {"tau": 1.0},
    )  # fmt: skip
    png = root / "plot.png"
    argv = [
        "evaluate", str(root / "wm"), "--agent", str(agents / "ppo_mlp.zip"),
        str(agents / "ppo_cnn.zip"), str(controller), "--episodes", "3", "--max-steps", "12",
        "--seed", "5", "--workers", "1", "--plot", str(png),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "dream / real" in out and "95% CI" in out
    reports = [
        agents / "ppo_mlp_transfer_tau1.15_seeds5.json",
        agents / "ppo_cnn_transfer_tau1.15_seeds5.json",
        controller / "transfer_tau1_seeds5.json",  # a controller's own training tau
    ]
    modes = ["latent", "pixels", "latent"]
    for path, original, mode in zip(reports, [model, cnn, None], modes, strict=True):
        report = json.loads(path.read_text())
        assert report["mode"] == "transfer" and report["obs_mode"] == mode
        assert report["kind"] == ("controller" if original is None else "sb3")
        assert report["pixels"] == ("reconstructed" if mode == "pixels" else None)
        dream, real = report["dream"], report["real"]
        for part in (dream, real):
            for key in ("mean", "std", "ci95", "min", "max", "returns", "seeds", "episodes"):
                assert key in part, key
            assert part["mean"] == pytest.approx(np.mean(part["returns"]))
            assert part["std"] == pytest.approx(np.std(part["returns"]))
            half = 4.302653 * np.std(part["returns"], ddof=1) / np.sqrt(3)
            assert part["ci95"] == pytest.approx([part["mean"] - half, part["mean"] + half])
        assert real["seeds"] == [5, 6, 7] and dream["seeds"] == [5]
        assert real["returns"] == [12.0, 12.0, 12.0]  # +1 per tic; nobody dies in 12 tics
        assert report["dream_real_ratio"] == pytest.approx(dream["mean"] / real["mean"])
        assert report["config"]["episodes"] == 3
        if original is not None:  # the weights loaded without pickle act as the model saved
            again = score_dreams(
                lambda obs, m=original: m.predict(obs, deterministic=True)[0], "DreamDoom-v0",
                3, 5, batched=True, world_model=wm, obs_mode=mode, max_episode_steps=12,
            )  # fmt: skip
            assert dream["returns"] == again.tolist()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def car_policy(obs: np.ndarray) -> np.ndarray:
    """A deterministic policy of the observation: steer by the sign of z's mean."""
    return np.array([np.tanh(obs[:32].mean()), 0.6, 0.0], np.float32)


@pytest.mark.slow
def test_a_callable_scores_the_same_in_two_runs(world_models):
    wm = world_models["car_racing"]
    kwargs = {"world_model": wm, "max_steps": 15, "episodes": 3, "seed": 2}
    first = score_transfer(car_policy, "DreamCarRacing-v0", **kwargs)
    again = score_transfer(car_policy, "DreamCarRacing-v0", **kwargs)
    in_workers = score_transfer(car_policy, "DreamCarRacing-v0", workers=2, **kwargs)
    for part in ("dream", "real"):
        assert first[part]["returns"] == again[part]["returns"] == in_workers[part]["returns"]
        assert len(set(first[part]["returns"])) > 1  # the seeds give different episodes
    assert first["real"]["seeds"] == [2, 3, 4] and first["agent"] == "car_policy"
    other = score_transfer(car_policy, "DreamCarRacing-v0", **{**kwargs, "seed": 3})
    assert other["real"]["returns"][:2] == first["real"]["returns"][1:]  # seed + i, episode i
    assert other["dream"]["returns"] != first["dream"]["returns"]
    batched = score_dreams(
        lambda obs: np.stack([car_policy(o) for o in obs]), "DreamCarRacing-v0", 3, 2,
        batched=True, world_model=wm, max_episode_steps=15,
    )  # fmt: skip
    assert batched.tolist() == first["dream"]["returns"]
    with pytest.raises(ValueError, match="does not pickle"):
        score_transfer(lambda obs: car_policy(obs), "DreamCarRacing-v0", workers=2, **kwargs)


def test_scoring_runs_with_one_torch_thread_and_restores_the_count(world_models):
    seen = []

    def policy(obs):
        seen.append(torch.get_num_threads())
        return car_policy(obs)

    torch.set_num_threads(2)
    try:
        score_transfer(policy, "DreamCarRacing-v0", 1, world_model=world_models["car_racing"],
                       max_steps=3)  # fmt: skip
        assert set(seen) == {1} and len(seen) >= 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


class Touch:
    """Unpickled, it creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bomb(marker: Path) -> dict:
    """A cloudpickle entry of SB3's ``data`` that, unpickled, creates ``marker``."""
    blob = base64.b64encode(pickle.dumps(Touch(marker))).decode()
    return {":type:": "<class 'str'>", ":serialized:": blob}


def rewrite(src: Path, dest: Path, change=None, weights: bytes | None = None) -> Path:
    """A copy of the SB3 zip ``src`` whose ``data`` JSON is ``change(data)`` and whose
    ``policy.pth`` is ``weights`` (given)."""
    with zipfile.ZipFile(src) as z_in, zipfile.ZipFile(dest, "w") as z_out:
        for name in z_in.namelist():
            blob = z_in.read(name)
            if name == "data" and change is not None:
                blob = json.dumps(change(json.loads(blob))).encode()
            if name == "policy.pth" and weights is not None:
                blob = weights
            z_out.writestr(name, blob)
    return dest


def test_an_untrusted_agent_is_never_unpickled(doom, tmp_path, capsys):
    wm, root, model, _ = doom
    marker = tmp_path / "unpickled"
    src = root / "agents" / "ppo_mlp.zip"

    def every_pickle_a_bomb(data):  # the JSON descriptions stay, every pickle is replaced
        return {k: {**v, **bomb(marker)} if isinstance(v, dict) and ":serialized:" in v else v
                for k, v in data.items()}  # fmt: skip

    armed = rewrite(src, tmp_path / "armed.zip", every_pickle_a_bomb)
    agent = load_agent(armed, *spaces(wm))
    obs = np.stack([spaces(wm)[0].sample() for _ in range(8)])
    np.testing.assert_array_equal(agent(obs), model.predict(obs, deterministic=True)[0])
    assert agent.kind == "sb3" and agent.algo == "ppo" and not marker.exists()

    # only with trust does SB3's own load run the file's pickles
    lr_only = rewrite(src, tmp_path / "lr.zip", lambda d: {**d, "lr_schedule": bomb(marker)})
    trusted = load_agent(lr_only, *spaces(wm), trust=True)
    assert marker.exists() and trusted.kind == "sb3-trusted"
    np.testing.assert_array_equal(trusted(obs), agent(obs))
    marker.unlink()

    # a network the loader cannot rebuild without unpickling is refused in one line
    custom = rewrite(src, tmp_path / "custom.zip", lambda d: {**d, "policy_kwargs": {
        **bomb(marker), "features_extractor_class": "<class 'mypkg.Net'>"}})  # fmt: skip
    with pytest.raises(AgentError, match="trust=True"):
        load_agent(custom, *spaces(wm))
    buffer = io.BytesIO()  # weights that are a pickled program, not tensors
    torch.save({"mlp_extractor.policy_net.0.weight": Touch(marker)}, buffer)
    with pytest.raises(AgentError, match="cannot rebuild its ppo policy"):
        load_agent(rewrite(src, tmp_path / "w.zip", weights=buffer.getvalue()), *spaces(wm))
    before = files(tmp_path)
    argv = ["evaluate", str(root / "wm"), "--agent", str(custom), "--episodes", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust-agent" in err and "features_extractor_class" in err
    assert files(tmp_path) == before and not marker.exists()


def test_bad_agents_get_one_line_errors_and_change_nothing(doom, tmp_path, capsys):
    wm, root, *_ = doom
    car = tiny_world_model("car_racing")
    # trained with as_vec_env(actions="controller"): C's tanh box, not CarRacing's actions
    ppo(car, actions="controller").save(tmp_path / "tanh.zip")
    car.save(tmp_path / "car_wm")
    agent = str(root / "agents" / "ppo_mlp.zip")
    cases = [
        (["--agent", str(tmp_path / "missing.zip")], "No such file"),
        (["--agent", agent, "--algo", "dqn"], "algo: expected one of"),
        (["--agent", agent, "--algo", "sac"], "holds a ppo agent, not sac"),
        (["--agent", agent, "--dream"], "dream: --agent scores"),
        (["--agent", agent, "--obs-mode", "pixels"], "observes latent, not pixels"),
        (["--plot", str(tmp_path / "p.png")], "plot: applies to --agent"),
    ]
    before = files(tmp_path) | files(root)
    for extra, message in cases:
        assert cli.main(["evaluate", str(root / "wm"), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
    wrong = ["evaluate", str(tmp_path / "car_wm"), "--agent", str(tmp_path / "tanh.zip")]
    assert cli.main(wrong) == 2
    err = capsys.readouterr().err
    assert "acts in a box of shape (3,)" in err and "the env in Box" in err
    assert cli.main(["evaluate", str(tmp_path / "car_wm"), "--agent", agent]) == 2
    assert "observes shape (96,)" in capsys.readouterr().err  # a Doom agent, a car's world model
    assert files(tmp_path) | files(root) == before
