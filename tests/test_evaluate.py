"""Controllers on disk, the policy they load as, and the evaluate stage (dream and real)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamgym import rollouts, workers
from dreamgym.games import get_game
from dreamgym.policy import (
    ControllerError,
    controller_config,
    load_controller,
    save_controller,
)
from dreamgym.train import evaluate
from dreamgym.train.common import WORLD_MODEL_DIR, open_run

torch.set_num_threads(1)

GAMES = ["doom_take_cover", "car_racing"]


def random_params(wm, seed: int = 0, scale: float = 0.3) -> np.ndarray:
    n = controller_config(wm).num_params
    return np.random.default_rng(seed).normal(0, scale, n).astype(np.float32)


def make_run(tmp_path: Path, wm, params, tau: float = 1.0) -> Path:
    """A run directory holding ``wm`` and one controller trained (nominally) at ``tau``."""
    run_dir, _ = open_run(tmp_path / "run", wm.game.name)
    wm.save(run_dir / WORLD_MODEL_DIR)
    save_controller(run_dir / f"evolve_tau{tau:g}", params, wm.game, {"tau": tau})
    return run_dir


# ---------------------------------------------------------------- controllers


@pytest.mark.parametrize("game", GAMES)
def test_controller_round_trip(tmp_path, world_models, game):
    wm = world_models[game]
    spec = get_game(game)
    params = random_params(wm)
    folder = save_controller(tmp_path / "c", params, game, {"tau": 1.15, "generations": 7})
    info = json.loads((folder / "controller.json").read_text())
    cfg = controller_config(wm)
    assert info["game"] == game and info["tau"] == 1.15 and info["generations"] == 7
    assert (info["in_dim"], info["out_dim"], info["bias"]) == (cfg.in_dim, cfg.out_dim, cfg.bias)
    assert info["num_params"] == params.size and "dreamgym_version" in info

    for source in (folder, folder / "controller.json", str(folder / "controller.safetensors")):
        policy = load_controller(source)
        np.testing.assert_array_equal(policy.params, params)
    obs = np.random.default_rng(1).normal(size=(5, cfg.in_dim)).astype(np.float32)
    actions = policy(obs)
    assert actions.shape == (5, spec.action_dim) and actions.dtype == np.float32
    n_w = cfg.out_dim * cfg.in_dim
    y = obs @ params[:n_w].reshape(cfg.out_dim, cfg.in_dim).T
    if cfg.bias:
        y = y + params[n_w:]
    expected = spec.controller_to_action(torch.tanh(torch.from_numpy(y))).numpy()
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(policy(obs[2]), actions[2], rtol=1e-6)
    assert all(spec.action_space.contains(a) for a in actions)


def test_a_two_output_car_controller_presses_one_pedal_and_round_trips(tmp_path, world_models):
    wm = world_models["car_racing"]
    y = torch.tensor([[0.3, 0.5], [-0.2, -0.7], [1.0, 0.0]])
    expected = [[0.3, 0.5, 0.0], [-0.2, 0.0, 0.7], [1.0, 0.0, 0.0]]
    np.testing.assert_allclose(wm.game.controller_to_action(y).numpy(), expected)
    cfg = controller_config(wm, outputs=2)
    assert (cfg.out_dim, cfg.num_params) == (2, 2 * (cfg.in_dim + 1))
    params = np.random.default_rng(0).normal(0, 0.3, cfg.num_params).astype(np.float32)
    folder = save_controller(tmp_path / "c", params, "car_racing", {"tau": 1.0}, outputs=2)
    assert json.loads((folder / "controller.json").read_text())["out_dim"] == 2
    policy = load_controller(folder)
    assert policy.controller.config == cfg
    obs = np.random.default_rng(1).normal(size=(64, cfg.in_dim)).astype(np.float32)
    actions = policy(obs)
    w = params[: 2 * cfg.in_dim].reshape(2, cfg.in_dim)
    y = np.tanh(obs @ w.T + params[2 * cfg.in_dim :])
    np.testing.assert_allclose(actions[:, 0], y[:, 0], atol=1e-5)
    np.testing.assert_allclose(actions[:, 1] - actions[:, 2], y[:, 1], atol=1e-5)
    assert np.all(np.minimum(actions[:, 1], actions[:, 2]) == 0)  # never gas and brake at once
    assert all(wm.game.action_space.contains(a) for a in actions)
    with pytest.raises(ControllerError, match="3 or 2 outputs"):
        controller_config(wm, outputs=4)
    with pytest.raises(ControllerError, match="1 outputs"):
        save_controller(tmp_path / "d", np.zeros(2 * 1088), "doom_take_cover", outputs=2)
    info = json.loads((folder / "controller.json").read_text())
    (folder / "controller.json").write_text(json.dumps({**info, "out_dim": 4}))
    with pytest.raises(ControllerError, match="'out_dim' is 4"):
        load_controller(folder)


def test_hidden_layer_controller_round_trip_scores_the_same_in_the_dream(tmp_path, world_models):
    wm = world_models["car_racing"]
    cfg = controller_config(wm, hidden=6)
    params = np.random.default_rng(0).normal(0, 0.3, cfg.num_params).astype(np.float32)
    folder = save_controller(tmp_path / "c", params, "car_racing", {"tau": 1.0}, hidden=6)
    info = json.loads((folder / "controller.json").read_text())
    assert info["hidden"] == 6 and info["num_params"] == cfg.num_params
    policy = load_controller(folder)
    assert policy.controller.config == cfg
    np.testing.assert_array_equal(policy.params, params)
    obs = np.random.default_rng(1).normal(size=(4, cfg.in_dim)).astype(np.float32)
    n_h = 6 * cfg.in_dim
    hid = np.tanh(obs @ params[:n_h].reshape(6, cfg.in_dim).T + params[n_h : n_h + 6])
    tail = params[n_h + 6 :]
    y = torch.tanh(torch.from_numpy(hid @ tail[:18].reshape(3, 6).T + tail[18:]))
    np.testing.assert_allclose(policy(obs), wm.game.controller_to_action(y).numpy(), atol=1e-5)
    with pytest.raises(ControllerError, match="hidden units"):
        save_controller(tmp_path / "bad", params[:-1], "car_racing", hidden=6)

    run_dir, _ = open_run(tmp_path / "run", "car_racing")
    wm.save(run_dir / WORLD_MODEL_DIR)
    shutil.copytree(folder, run_dir / "evolve_tau1")
    config = evaluate.EvaluateConfig(episodes=4, dream=True, max_steps=30, threads=1)
    report = json.loads(evaluate.run(config, run_dir).read_text())
    ev = rollouts.DreamEvaluator(wm, 1.0, max_steps=30, controller=cfg)
    np.testing.assert_allclose(report["returns"], ev.returns(params[None], 4, seed=0)[0])
    with pytest.raises(ValueError, match="params"):  # the linear C's evaluator
        rollouts.DreamEvaluator(wm, 1.0, max_steps=30).returns(params[None], 4, seed=0)


def test_controller_bad_input_gets_clear_errors(tmp_path, world_models, monkeypatch):
    wm = world_models["doom_take_cover"]
    params = random_params(wm)
    with pytest.raises(ControllerError, match="NaN"):
        save_controller(tmp_path / "x", np.full_like(params, np.nan), "doom_take_cover")
    with pytest.raises(ControllerError, match="do not make a car_racing controller"):
        save_controller(tmp_path / "x", np.zeros(10), "car_racing")
    with pytest.raises(ControllerError, match="not a game name"):
        load_controller(tmp_path / "nowhere")

    import dreamgym.shipped

    monkeypatch.setattr(
        dreamgym.shipped, "shipped_dir", lambda game: tmp_path / "models" / get_game(game).name
    )
    with pytest.raises(ControllerError, match="no controller ships.*dreamgym evolve"):
        load_controller("doom_take_cover")

    folder = save_controller(tmp_path / "c", params, "doom_take_cover")
    policy = load_controller(folder)
    with pytest.raises(ValueError, match=rf"obs: expected shape \({policy.obs_dim},\)"):
        policy(np.zeros(policy.obs_dim + 1))
    with pytest.raises(ValueError, match="NaN"):
        policy(np.full(policy.obs_dim, np.nan))

    info = json.loads((folder / "controller.json").read_text())
    (folder / "controller.json").write_text(json.dumps({**info, "in_dim": info["in_dim"] + 1}))
    with pytest.raises(ControllerError, match="key 'weight' has shape"):
        load_controller(folder)
    (folder / "controller.json").write_text(json.dumps(info))
    data = (folder / "controller.safetensors").read_bytes()
    (folder / "controller.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ControllerError, match="controller.safetensors"):
        load_controller(folder)
    (folder / "controller.json").write_text("{")
    with pytest.raises(ControllerError, match="not valid JSON"):
        load_controller(folder)


# ---------------------------------------------------------------- evaluate in the dream


@pytest.mark.parametrize("game", GAMES)
def test_dream_scores_every_game(world_models, game):
    wm = world_models[game]
    params = np.stack([random_params(wm, seed) for seed in range(3)])
    scores = rollouts.DreamEvaluator(wm, tau=1.0, max_steps=25).returns(params, 4, seed=0)
    assert scores.shape == (3, 4) and np.isfinite(scores).all()
    if game == "doom_take_cover":  # +1 per step alive: a return is an episode length
        assert ((scores >= 1) & (scores <= 25)).all()


def test_evaluate_in_the_dream_writes_the_report(tmp_path, world_models, monkeypatch):
    wm = world_models["doom_take_cover"]
    params = random_params(wm)
    run_dir = make_run(tmp_path, wm, params, tau=1.0)
    cfg = evaluate.EvaluateConfig(episodes=12, dream=True, max_steps=30, seed=4)
    out = evaluate.run(cfg, run_dir)
    assert out == run_dir / "evolve_tau1" / "evaluate_dream_tau1.json"
    report = json.loads(out.read_text())
    returns = np.array(report["returns"])
    expected = rollouts.DreamEvaluator(wm, 1.0, max_steps=30).returns(params[None], 12, 4)[0]
    np.testing.assert_array_equal(returns, expected)
    assert report["mode"] == "dream" and report["tau"] == 1.0 and report["game"] == wm.game.name
    assert report["episodes"] == 12 and report["seeds"] == [4] and report["max_steps"] == 30
    assert report["mean"] == pytest.approx(returns.mean())
    assert report["std"] == pytest.approx(returns.std())
    assert (report["min"], report["max"]) == (returns.min(), returns.max())
    assert ((returns >= 1) & (returns <= 30)).all() and len(set(returns)) > 1
    assert report["wall_seconds"] >= 0 and report["controller"].endswith("evolve_tau1")
    table = evaluate.format_table(out)
    assert "dream, tau 1" in table and f"{returns.mean():.1f} ± {returns.std():.1f}" in table
    report_first = report

    # the evolve folder and a model folder (world model + controller together) work too
    again = evaluate.run(cfg, run_dir / "evolve_tau1")
    assert json.loads(again.read_text())["returns"] == report["returns"]
    model = tmp_path / "model"
    shutil.copytree(run_dir / WORLD_MODEL_DIR, model)
    for name in ("controller.json", "controller.safetensors"):
        shutil.copy(run_dir / "evolve_tau1" / name, model / name)
    hot = evaluate.EvaluateConfig(episodes=12, dream=True, max_steps=30, seed=4, tau=1.3,
                                  output=str(tmp_path / "r.json"))  # fmt: skip
    report = json.loads(evaluate.run(hot, model).read_text())
    assert report["tau"] == 1.3 and report["trained_tau"] == 1.0 and report["episodes"] == 12

    # a shipped model folder, named by its game: the report goes to runs/evaluate/<game>/,
    # never over the shipped reports
    import dreamgym.shipped

    monkeypatch.setattr(dreamgym.shipped, "_models_root", lambda: tmp_path / "models")
    shutil.copytree(model, tmp_path / "models" / "doom_take_cover")
    monkeypatch.chdir(tmp_path)
    out = evaluate.run(cfg, "doom_take_cover")
    assert out == Path("runs/evaluate/doom_take_cover/evaluate_dream_tau1.json")
    assert json.loads(out.read_text())["returns"] == report_first["returns"]
    assert not (tmp_path / "models" / "doom_take_cover" / out.name).exists()


def test_report_names_keep_other_tracks_apart():
    assert evaluate.report_name("real", 1.0, "first", 0) == "evaluate_real.json"
    assert evaluate.report_name("real", 1.0, "first", 100) == "evaluate_real_seeds100.json"
    assert evaluate.report_name("dream", 1.15, "first", 4) == "evaluate_dream_tau1.15.json"
    assert evaluate.report_name("dream", 1.0, "real", 0) == "evaluate_dream_tau1_real_starts.json"
    assert (
        evaluate.report_name("dream", 1.15, "first", 0, 0.0)
        == "evaluate_dream_tau1.15_dropout0.json"
    )


def test_source_resolution(tmp_path, world_models):
    wm = world_models["doom_take_cover"]
    run_dir, _ = open_run(tmp_path, "doom_take_cover")
    with pytest.raises(FileNotFoundError, match="fit-mdnrnn"):
        evaluate.resolve_source(run_dir)
    wm.save(run_dir / WORLD_MODEL_DIR)
    with pytest.raises(FileNotFoundError, match="run evolve first"):
        evaluate.resolve_source(run_dir)
    for tau in (1.0, 1.15):
        save_controller(run_dir / f"evolve_tau{tau:g}", random_params(wm), wm.game, {"tau": tau})
    with pytest.raises(ValueError, match="several controllers.*--controller"):
        evaluate.resolve_source(run_dir)
    wm_dir, ctrl = evaluate.resolve_source(run_dir, tau=1.15)
    assert (wm_dir, ctrl) == (run_dir / "world_model", run_dir / "evolve_tau1.15")
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        evaluate.resolve_source(tmp_path / "missing")
    car = world_models["car_racing"]
    save_controller(tmp_path / "car_c", random_params(car), car.game)
    cfg = evaluate.EvaluateConfig(episodes=1, dream=True, controller=str(tmp_path / "car_c"))
    with pytest.raises(ValueError, match="car_racing controller.*doom_take_cover"):
        evaluate.run(cfg, run_dir)


def test_old_and_new_run_folders_resolve_by_the_tau_their_controller_records(
    tmp_path, world_models
):
    wm = world_models["doom_take_cover"]
    run_dir, _ = open_run(tmp_path, "doom_take_cover")
    wm.save(run_dir / WORLD_MODEL_DIR)
    old = save_controller(run_dir / "evolve_tau1", random_params(wm), wm.game, {"tau": 1.0})
    assert evaluate.resolve_source(run_dir) == (run_dir / WORLD_MODEL_DIR, old)  # the only one
    assert evaluate.resolve_source(run_dir, tau=2.0)[1] == old  # the only one, at another tau
    new = save_controller(run_dir / "evolve-0123abcd", random_params(wm), wm.game, {"tau": 1.3})
    save_controller(run_dir / "evolve-89abcdef", random_params(wm), wm.game, {"tau": None})
    assert evaluate.resolve_source(run_dir, tau=1.3)[1] == new  # read, not parsed from a name
    assert evaluate.resolve_source(run_dir, tau=1.0)[1] == old
    listed = r"evolve-0123abcd \(tau 1.3\), evolve-89abcdef \(tau real\), evolve_tau1 \(tau 1\)"
    with pytest.raises(ValueError, match=listed):
        evaluate.resolve_source(run_dir)
    # two at one tau: the folder an older version named by tau alone, else a choice to make
    save_controller(run_dir / "evolve_tau1_z", random_params(wm), wm.game, {"tau": 1.0})
    assert evaluate.resolve_source(run_dir, tau=1.0)[1] == old
    save_controller(run_dir / "evolve-01234567", random_params(wm), wm.game, {"tau": 1.3})
    with pytest.raises(ValueError, match="several controllers"):
        evaluate.resolve_source(run_dir, tau=1.3)
    (run_dir / "evolve-76543210").mkdir()  # a run killed before its first score: no controller
    assert evaluate.resolve_source(run_dir, tau=1.0)[1] == old


# ---------------------------------------------------------------- evaluate in the real game


@pytest.mark.slow
def test_real_evaluation_in_doom(tmp_path, world_models):
    pytest.importorskip("vizdoom")
    wm = world_models["doom_take_cover"]
    params = random_params(wm)
    run_dir = make_run(tmp_path, wm, params)
    cfg = evaluate.EvaluateConfig(episodes=3, workers=2, max_steps=12, seed=5)
    report = json.loads(evaluate.run(cfg, run_dir).read_text())
    assert report["mode"] == "real" and report["seeds"] == [5, 6, 7]
    assert report["returns"] == [12.0, 12.0, 12.0]  # +1 per tic, nobody dies in 12 tics
    with rollouts.RealEvaluator(run_dir / "world_model", workers=1, max_steps=40) as real:
        both = np.stack([params, -params])
        r = real.returns(both, 2, seed=0)
        assert r.shape == (2, 2) and ((r > 0) & (r <= 40)).all()
        assert real.steps == r.sum()  # Doom pays +1 per tic


def _start_a_game(pid_file):
    """A worker initializer that starts a long-lived child process, as a game does."""
    import subprocess

    game = subprocess.Popen(["sleep", "600"])
    Path(pid_file).write_text(f"{game.pid} {workers._start_time(game.pid)}")


def test_a_worker_that_exits_kills_the_games_it_started(tmp_path):
    # A game the pool never saw (started after its last look at the workers) must
    # still go when the pool closes: the worker kills its own games as it exits.
    pid_file = tmp_path / "game.pid"
    pool = workers.GamePool(1, _start_a_game, (str(pid_file),))
    assert pool.submit(int, "7").result(timeout=60) == 7  # the worker has started its game
    pid, start = pid_file.read_text().split()
    assert workers._start_time(int(pid)) == start
    pool._pool.shutdown(wait=True)  # as a normal close, without the pool's own look
    deadline = time.time() + 5
    while workers._start_time(int(pid)) == start and time.time() < deadline:
        time.sleep(0.1)
    left = workers._start_time(int(pid)) == start
    if left:
        os.kill(int(pid), signal.SIGKILL)
    assert not left, "the worker left its game behind"


@pytest.mark.slow
def test_a_dead_real_worker_raises_instead_of_hanging(tmp_path, world_models):
    pytest.importorskip("vizdoom")
    wm = world_models["doom_take_cover"]
    run_dir = make_run(tmp_path, wm, random_params(wm))
    real = rollouts.RealEvaluator(run_dir / "world_model", workers=1, max_steps=5, poll=0.2)
    try:
        real.returns(random_params(wm)[None], 1, seed=0)  # starts the worker and its game
        (pid,) = list(real.pool._pool._processes)  # the worker this test started
        games = workers._descendants(pid)
        assert games, "the worker runs ViZDoom in a child process"
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
        t0 = time.time()
        with pytest.raises(workers.WorkerDiedError, match="worker process died"):
            real.returns(random_params(wm)[None], 4, seed=0)
        assert time.time() - t0 < 10
        deadline = time.time() + 5
        while any(workers._start_time(g) for g in games) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(workers._start_time(g) for g in games), "a game process was left behind"
    finally:
        real.close(kill=True)
