"""CMA-ES: the ask/tell wrapper, batched dream fitness, the evolve stage, resume and kill."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sigkill_when, tiny_world_model

from dreamgym import cli
from dreamgym import dream_core as dc
from dreamgym.cmaes import CMAES
from dreamgym.controller import Controller
from dreamgym.policy import ControllerError, controller_config, load_controller
from dreamgym.rollouts import DreamEvaluator, dream_rollouts
from dreamgym.train import evaluate, evolve, search
from dreamgym.train.common import RunDirError, load_checkpoint, open_run, save_checkpoint
from dreamgym.world_model import WorldModel

torch.set_num_threads(1)


def tiny_world(danger: float = 0.1, threshold: float = 0.8) -> WorldModel:
    """A Doom world model whose death depends on the action, so fitness can improve.

    M's LSTM unit 0 accumulates danger: + tanh(danger * (1 - 2a)) per step for the
    executed action a in {-1, 0, 1}; moving right lowers it, staying or moving left
    raises it, and the done head fires once h0 > threshold (staying: ~11 steps).
    Unit 1 is a constant (c = 1) the controller can learn to read. z ~ N(0, 1) noise.
    """
    wm = WorldModel.create("doom_take_cover", n_bank=4, hidden=16)
    m, H, Z = wm.mdnrnn, 16, 64
    i, f, g, o = 0, H, 2 * H, 3 * H
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        lstm = m.lstm
        lstm.bias_ih_l0[[i, f, o]] = 20.0
        lstm.weight_ih_l0[g, Z] = -2 * danger
        lstm.bias_ih_l0[g] = danger
        lstm.bias_ih_l0[[i + 1, g + 1, o + 1]] = 20.0
        lstm.bias_ih_l0[f + 1] = -20.0
        done = 3 * m.config.n_mix * Z
        m.head.weight[done, 0] = 10.0
        m.head.bias[done] = -10.0 * threshold
    return wm


def make_run(path: Path) -> Path:
    run_dir, _ = open_run(path, "doom_take_cover")
    tiny_world().save(run_dir / "world_model")
    return run_dir


def tiny_config(**kw) -> evolve.EvolveConfig:
    base = dict(tau=1.0, generations=5, popsize=8, trials=3, max_steps=40, eval_every=2,
                eval_rollouts=16, seed=3, threads=1)  # fmt: skip
    return evolve.EvolveConfig(**{**base, **kw})


def metric_rows(out: Path) -> list[dict]:
    """The metrics log without wall times and scores of the CMA mean (a run that stops
    early also scores the mean at its last generation)."""
    rows = [json.loads(line) for line in (out / evolve.METRICS_FILE).read_text().splitlines()]
    drop = ("time", "seconds", "eval_mean", "eval_std")
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


# ---------------------------------------------------------------- the wrapper


def test_cmaes_solves_a_quadratic():
    target = np.linspace(-1, 1, 10)
    es = CMAES(10, popsize=12, sigma0=0.5, seed=0)
    while es.generation < 500 and es.best_f < -1e-7:
        X = es.ask()
        assert X.shape == (12, 10)
        es.tell(-np.sum((X - target) ** 2, axis=1))  # higher is better
    assert es.best_f > -1e-6
    assert np.sum((es.best_x - target) ** 2) < 1e-6
    assert np.sum((es.mean - target) ** 2) < 1e-4


def test_cmaes_rejects_misuse():
    es = CMAES(4, popsize=6, seed=0)
    with pytest.raises(RuntimeError, match="ask"):
        es.tell(np.zeros(6))
    es.ask()
    with pytest.raises(ValueError, match="6 finite values"):
        es.tell(np.zeros(5))
    with pytest.raises(ValueError, match="6 finite values"):
        es.tell([0, 1, 2, 3, 4, np.nan])
    assert np.array_equal(es.ask(), es.ask())  # asking again before tell repeats the population
    with pytest.raises(ValueError, match="popsize"):
        CMAES(4, popsize=1)


def test_cmaes_state_round_trip_continues_identically(tmp_path):
    def f(X):
        return -np.sum((X - 0.3) ** 2, axis=1) - np.abs(X[:, 0] * X[:, 1])

    a = CMAES(40, popsize=10, seed=7)
    for _ in range(25):
        a.tell(f(a.ask()))
    arrays, values = a.state()
    save_checkpoint(tmp_path / "s.safetensors", arrays, values)
    arrays, values = load_checkpoint(tmp_path / "s.safetensors")
    b = CMAES(40, popsize=10, seed=999)  # the seed is replaced by the saved RNG state
    b.load_state(arrays, values)
    assert b.generation == a.generation == 25
    for _ in range(15):
        X = a.ask()
        np.testing.assert_array_equal(X, b.ask())
        a.tell(f(X))
        b.tell(f(X))
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.sigma == b.sigma
    np.testing.assert_array_equal(a.es.sm.C, b.es.sm.C)


# ---------------------------------------------------------------- dream fitness


def reference_returns(wm, params, trials, seed, max_steps):
    """Each controller alone, every row stepped to the cap, no compaction (tau = 0)."""
    cfg = controller_config(wm)
    out = np.zeros((len(params), trials))
    for p, theta in enumerate(params):
        ctrl = Controller(cfg)
        ctrl.set_flat(torch.as_tensor(theta))
        g = torch.Generator().manual_seed(seed)
        state = dc.initial_state(wm, trials, g)
        alive = torch.ones(trials, dtype=torch.bool)
        for _ in range(max_steps):
            a = wm.game.controller_to_action(ctrl(dc.observation(wm, state)))
            state, r, done = dc.step(wm, state, a, 0.0, g)
            out[p] += (r * alive).numpy()
            alive &= ~done
    return out


def test_batched_dream_fitness_equals_each_member_alone():
    wm = tiny_world()
    n = controller_config(wm).num_params
    params = np.random.default_rng(0).normal(0, 0.3, (6, n)).astype(np.float32)
    g = torch.Generator().manual_seed(11)
    batched, steps = dream_rollouts(wm, params, 5, 0.0, g, max_steps=40)
    assert batched.shape == (6, 5)
    ref = reference_returns(wm, params, 5, 11, 40)
    np.testing.assert_allclose(batched.numpy(), ref)
    assert 0 < ref.min() and ref.max() == 40 and len(np.unique(ref)) > 3  # varied endings
    assert steps < 6 * 5 * 40  # finished rollouts were dropped from the batch
    for p in range(6):
        alone, _ = dream_rollouts(wm, params[p : p + 1], 5, 0.0,
                                  torch.Generator().manual_seed(11), max_steps=40)  # fmt: skip
        np.testing.assert_allclose(alone.numpy()[0], ref[p])


def test_dream_evaluator_is_reproducible_and_checks_shapes():
    wm = tiny_world()
    n = controller_config(wm).num_params
    params = np.random.default_rng(1).normal(0, 0.1, (4, n))
    ev = DreamEvaluator(wm, tau=1.0, max_steps=30)
    a = ev.returns(params, 3, seed=5)
    np.testing.assert_array_equal(a, ev.returns(params, 3, seed=5))
    assert not np.array_equal(a, ev.returns(params, 3, seed=6))
    with pytest.raises(ValueError, match=f"\\(P, {n}\\)"):
        ev.returns(params[:, :-1], 3, seed=5)
    with pytest.raises(ValueError, match="tau"):
        DreamEvaluator(wm, tau=0.0)


def test_a_dream_with_its_own_m_following_is_the_dream_itself():
    wm = tiny_world()
    params = np.random.default_rng(2).normal(0, 0.3, (3, controller_config(wm).num_params))
    alone, _ = dream_rollouts(wm, params, 4, 1.0, torch.Generator().manual_seed(7), 40)
    followed, _ = dream_rollouts(
        wm, params, 4, 1.0, torch.Generator().manual_seed(7), 40, world=tiny_world()
    )
    np.testing.assert_array_equal(alone.numpy(), followed.numpy())


def test_an_ensemble_scores_each_controller_by_its_worst_model():
    wm, harsh = tiny_world(), tiny_world(danger=0.3)  # danger builds 3x faster in harsh
    params = np.random.default_rng(3).normal(0, 0.3, (5, controller_config(wm).num_params))
    ev = DreamEvaluator(wm, tau=1.0, max_steps=40, worlds=[harsh])
    r = ev.returns(params, 6, seed=9)
    assert r.shape == (5, 12)
    own = DreamEvaluator(wm, tau=1.0, max_steps=40).returns(params, 6, seed=9)
    np.testing.assert_array_equal(r[:, :6], own)
    g = torch.Generator().manual_seed(9)
    in_harsh, _ = dream_rollouts(wm, params, 6, 1.0, g, 40, world=harsh)
    np.testing.assert_array_equal(r[:, 6:], in_harsh.numpy())
    assert r[:, 6:].mean() < r[:, :6].mean()  # harsh kills sooner
    np.testing.assert_array_equal(ev.fitness(r), np.minimum(own.mean(1), r[:, 6:].mean(1)))
    held_out = DreamEvaluator(wm, tau=1.0, max_steps=40, worlds=[harsh], members=None)
    np.testing.assert_array_equal(held_out.returns(params, 6, seed=9), r[:, 6:])  # C reads wm's M
    with pytest.raises(ValueError, match="members=None"):
        DreamEvaluator(wm, tau=1.0, members=None)


# ---------------------------------------------------------------- the stage


def test_evolve_improves_fitness_in_a_tiny_dream(tmp_path):
    run_dir = make_run(tmp_path)
    cfg = tiny_config(generations=10, popsize=12, trials=4, eval_every=5, eval_rollouts=32)
    out = evolve.run(cfg, run_dir)
    rows = metric_rows(out)
    assert [r["generation"] for r in rows] == list(range(1, 11))
    assert rows[0]["mean"] < 20  # doing nothing dies after ~11 steps
    assert rows[-1]["mean"] > rows[0]["mean"] + 10
    info = json.loads((out / "controller.json").read_text())
    assert info["tau"] == 1.0 and info["eval"]["mean"] > 25
    assert [e["generation"] for e in info["evals"]] == [5, 10]
    policy = load_controller(out)
    ev = DreamEvaluator(WorldModel.load(run_dir / "world_model"), 1.0, max_steps=40)
    still = ev.returns(np.zeros((1, policy.params.size)), 32, seed=0).mean()
    assert still < 15
    assert ev.returns(policy.params[None], 32, seed=0).mean() > 2 * still


def test_z_only_controllers_never_read_h_and_have_their_own_folder(tmp_path):
    run_dir = make_run(tmp_path)
    out = evolve.run(tiny_config(generations=3, inputs="z"), run_dir)
    assert out == run_dir / evolve.folder_name(tiny_config(inputs="z"))
    assert out.name != evolve.folder_name(tiny_config())
    policy = load_controller(out)
    weight = policy.params[: 64 + 2 * 16].reshape(1, -1)  # Doom: [z, c, h], one output
    assert np.any(weight[:, :64] != 0) and np.all(weight[:, 64:] == 0)
    assert json.loads((out / "controller.json").read_text())["inputs"] == "z"
    _, values = load_checkpoint(out / evolve.CMA_FILE)
    assert values["cma"]["num_params"] == 64  # CMA-ES searched the z weights only
    with pytest.raises(ValueError, match="inputs"):
        evolve.run(tiny_config(inputs="h"), run_dir)


def test_a_z_only_controller_with_a_hidden_layer_reads_z_through_its_first_layer(tmp_path):
    run_dir = make_run(tmp_path)
    out = evolve.run(tiny_config(generations=3, inputs="z", hidden=4), run_dir)
    assert out.name == evolve.folder_name(tiny_config(inputs="z", hidden=4))
    assert out.name != evolve.folder_name(tiny_config(inputs="z"))
    policy = load_controller(out)
    cfg = policy.controller.config
    assert cfg == controller_config(WorldModel.load(run_dir / "world_model"), hidden=4)
    first = policy.controller.hidden_weight.detach().numpy()  # (4, [z, c, h])
    assert np.any(first[:, :64] != 0) and np.all(first[:, 64:] == 0)
    assert np.any(policy.controller.weight.detach().numpy() != 0)
    _, values = load_checkpoint(out / evolve.CMA_FILE)
    assert values["cma"]["num_params"] == cfg.num_params - 4 * 2 * 16
    with pytest.raises(RunDirError, match="hidden"):  # the same folder, another width
        wider = tiny_config(generations=4, inputs="z", hidden=5)
        evolve.evolve(wider, run_dir / "world_model", out)
    with pytest.raises(ValueError, match="hidden units"):  # a linear C cannot seed it
        evolve.run(tiny_config(generations=3, init=str(out), hidden=0), run_dir)


def test_a_two_output_car_controller_evolves_in_its_own_folder(tmp_path):
    run_dir, _ = open_run(tmp_path / "run", "car_racing")
    wm = tiny_world_model("car_racing")
    wm.save(run_dir / "world_model")
    out = evolve.run(tiny_config(generations=2, inputs="z", outputs=2), run_dir)
    assert out.name == evolve.folder_name(tiny_config(inputs="z", outputs=2))
    policy = load_controller(out)
    assert policy.controller.config == controller_config(wm, outputs=2)
    _, values = load_checkpoint(out / evolve.CMA_FILE)
    assert values["cma"]["num_params"] == 2 * 32 + 2  # z weights and biases of two outputs
    with pytest.raises(RunDirError, match="outputs"):
        evolve.evolve(tiny_config(generations=3, inputs="z"), run_dir / "world_model", out)
    with pytest.raises(ValueError, match="2 outputs"):  # a 3-output C cannot seed it
        three = evolve.run(tiny_config(generations=1, inputs="z"), run_dir)
        evolve.run(tiny_config(generations=3, inputs="z", outputs=2, init=str(three)), run_dir)
    with pytest.raises(ControllerError, match="3 or 2 outputs"):
        evolve.run(tiny_config(generations=1, outputs=5), run_dir)
    assert not (run_dir / evolve.folder_name(tiny_config(outputs=5))).exists()


def test_evolve_in_an_ensemble_keeps_the_controller_its_worst_model_scores_best(tmp_path):
    run_dir = make_run(tmp_path / "run")
    wm = WorldModel.load(run_dir / "world_model")
    harsh = tiny_world(danger=0.3)
    harsh.vae.load_state_dict(wm.vae.state_dict())  # an M of the same V
    harsh_dir = harsh.save(tmp_path / "harsh")
    out = evolve.run(tiny_config(generations=4, ensemble=(str(harsh_dir),)), run_dir)
    assert out.name == evolve.folder_name(tiny_config(ensemble=(str(harsh_dir),)))
    info = json.loads((out / "controller.json").read_text())
    assert info["ensemble"] == [str(harsh_dir)]
    for e in info["evals"]:
        assert len(e["model_means"]) == 2 and e["score"] == min(e["model_means"])
    assert info["eval"]["score"] == max(e["score"] for e in info["evals"])
    assert all("eval_score" in r for r in metric_rows(out) if r["generation"] in (2, 4))
    same = ["--tau", "1", "--generations", "4", "--popsize", "8", "--trials", "3",
            "--max-steps", "40", "--seed", "3", "--threads", "1"]  # fmt: skip
    assert cli.main(["evolve", str(run_dir), *same, "--ensemble", str(harsh_dir)]) == 0  # done
    with pytest.raises(RunDirError, match="ensemble"):
        other = tiny_config(generations=5, ensemble=(str(run_dir / "world_model"),))
        evolve.evolve(other, run_dir / "world_model", out)
    stranger = tiny_world().save(tmp_path / "stranger")  # a freshly initialised V
    with pytest.raises(ValueError, match="another V"):
        evolve.evolve(
            tiny_config(ensemble=(str(stranger),)), run_dir / "world_model", tmp_path / "x"
        )
    with pytest.raises(ValueError, match="ensemble"):
        evolve.run(tiny_config(real=True, ensemble=(str(harsh_dir),)), run_dir)


def test_fine_tuning_starts_from_a_controller_and_keeps_it_unless_it_improves(tmp_path):
    run_dir = make_run(tmp_path)
    first = evolve.run(tiny_config(generations=4), run_dir)
    start = json.loads((first / "controller.json").read_text())
    tuned = evolve.evolve(
        tiny_config(generations=2, init=str(first), sigma0=0.02, eval_every=1),
        run_dir / "world_model",
        tmp_path / "tuned",
    )
    info = json.loads((tuned / "controller.json").read_text())
    assert info["init"] == str(first)
    assert [e["generation"] for e in info["evals"]] == [0, 1, 2]
    ev = DreamEvaluator(WorldModel.load(run_dir / "world_model"), 1.0, max_steps=40)
    seed = evolve.rollout_seed(3, 0, stream=1)
    scored = ev.returns(load_controller(first).params[None], 16, seed)[0].mean()
    assert info["evals"][0]["mean"] == scored
    assert info["eval"]["mean"] == max(e["mean"] for e in info["evals"]) >= info["evals"][0]["mean"]
    assert start["eval"]["rollouts"] == 16
    with pytest.raises(ValueError, match="reads h"):
        z_only = tiny_config(init=str(first), inputs="z")
        evolve.evolve(z_only, run_dir / "world_model", tmp_path / "x")


def test_wall_time_budget_ends_the_run_with_the_mean_scored_and_a_rerun_continues(tmp_path):
    wm_dir = tiny_world().save(tmp_path / "wm")  # a world-model folder, not a run directory
    cfg = tiny_config(generations=10_000, eval_every=1000, max_steps=400, seconds=1.0)
    t0 = time.time()
    out = evolve.evolve(cfg, wm_dir, tmp_path / "out")
    assert time.time() - t0 < 5
    rows = metric_rows(out)
    assert 1 <= len(rows) < 10_000
    info = json.loads((out / "controller.json").read_text())
    assert info["eval"]["generation"] == len(rows)  # the last generation scored the mean
    again = evolve.evolve(cfg, wm_dir, tmp_path / "out")
    assert metric_rows(again)[: len(rows)] == rows and len(metric_rows(again)) > len(rows)
    with pytest.raises(ValueError, match="seconds"):
        evolve.evolve(tiny_config(seconds=0.0), wm_dir, tmp_path / "bad")


def test_rerun_resumes_to_the_same_state_as_a_straight_run(tmp_path):
    straight = evolve.run(tiny_config(generations=5), make_run(tmp_path / "a"))
    run_b = make_run(tmp_path / "b")
    evolve.run(tiny_config(generations=3), run_b)
    _, values = load_checkpoint(run_b / evolve.folder_name(tiny_config()) / evolve.CMA_FILE)
    assert values["cma"]["es.countiter"] == 3
    resumed = evolve.run(tiny_config(generations=5), run_b)
    assert metric_rows(resumed) == metric_rows(straight)
    a, va = load_checkpoint(straight / evolve.CMA_FILE)
    b, vb = load_checkpoint(resumed / evolve.CMA_FILE)
    assert va["cma"] == vb["cma"] and sorted(a) == sorted(b)
    for k in a:
        if k != "best_eval_x":  # the stop at 3 also scored the mean there
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    evals = [
        e["generation"] for e in json.loads((resumed / "controller.json").read_text())["evals"]
    ]
    assert evals == [2, 3, 4, 5]
    # a finished run returns at once
    mtime = (resumed / evolve.CMA_FILE).stat().st_mtime_ns
    assert evolve.run(tiny_config(generations=5), run_b) == resumed
    assert (resumed / evolve.CMA_FILE).stat().st_mtime_ns == mtime


def test_resume_refuses_a_changed_config_and_a_corrupt_checkpoint(tmp_path):
    run_dir = make_run(tmp_path)
    out = evolve.run(tiny_config(generations=1), run_dir)
    with pytest.raises(RunDirError, match="started with popsize=8, now popsize=10"):
        evolve.evolve(tiny_config(generations=2, popsize=10), run_dir / "world_model", out)
    with pytest.raises(RunDirError, match="popsize=8"):  # --out names the folder
        evolve.run(tiny_config(generations=2, popsize=10, out=str(out)), run_dir)
    (out / evolve.CMA_FILE).write_bytes(b"\x00" * 100)
    with pytest.raises(RunDirError, match="cma.safetensors: corrupt checkpoint.*delete it"):
        evolve.run(tiny_config(generations=2), run_dir)


def test_a_run_folder_is_named_by_the_settings_that_shape_the_controller():
    name = evolve.folder_name(tiny_config())
    assert re.fullmatch(r"evolve-[0-9a-f]{8}", name)
    # how long it runs, how often it scores, how fast: the same run, resumed
    longer = tiny_config(generations=50, eval_every=7, eval_rollouts=8, seconds=3.0, threads=2)
    assert evolve.folder_name(longer) == name
    assert evolve.folder_name(tiny_config(tau=1)) == name  # 1 is 1.0
    assert evolve.folder_name(tiny_config(ensemble=["a"])) == evolve.folder_name(
        tiny_config(ensemble=("a",))
    )  # a list is the tuple it reads back as
    others = {evolve.folder_name(tiny_config(**kw)) for kw in (
        {"tau": 1.15}, {"init": "runs/a/evolve-0"}, {"init": "runs/b/evolve-0"}, {"seed": 4},
        {"inputs": "z"}, {"real": True}, {"dropout": 0.0},
    )}  # fmt: skip
    assert len(others) == 7 and name not in others
    real = evolve.folder_name(tiny_config(real=True))
    assert evolve.folder_name(tiny_config(real=True, tau=2.0)) == real  # no dream, no tau
    # values left at their defaults do not count: a key added later keeps every name
    cfg, keys = tiny_config(), ("tau", "popsize")
    assert search.run_id(cfg, keys) == search.run_id(cfg, (*keys, "hidden"))
    # the defaults' name is fixed: a new version finds the folders of an older one
    assert evolve.folder_name(evolve.EvolveConfig()) == "evolve-44136fa3"
    assert evolve.folder_name(evolve.EvolveConfig(tau=1.0)) == "evolve-0b10fa77"  # as the docs say


def test_the_same_command_resumes_its_folder_and_another_init_or_tau_writes_another(
    tmp_path, capsys
):
    run_dir = make_run(tmp_path)
    args = ["evolve", str(run_dir), "--tau", "1", "--popsize", "8", "--trials", "3",
            "--max-steps", "40", "--seed", "3", "--threads", "1", "--eval-every", "2",
            "--eval-rollouts", "16"]  # fmt: skip

    def folder(*more) -> Path:
        assert cli.main([*args, *more]) == 0
        return Path(capsys.readouterr().out.splitlines()[-1])  # the CLI prints the folder

    first = folder("--generations", "2")
    assert first == run_dir / evolve.folder_name(tiny_config())
    assert json.loads((first / evolve.CONFIG_NAME).read_text())["popsize"] == 8
    assert folder("--generations", "3") == first
    assert [r["generation"] for r in metric_rows(first)] == [1, 2, 3]  # on from 2, not anew
    tuned = folder("--generations", "1", "--init", str(first))
    hotter = folder("--generations", "1", "--tau", "1.15")
    assert len({first, tuned, hotter}) == 3 and {tuned.parent, hotter.parent} == {run_dir}
    assert json.loads((tuned / evolve.CONFIG_NAME).read_text())["init"] == str(first)
    assert folder("--generations", "1", "--init", str(first)) == tuned
    mine = folder("--generations", "1", "--out", str(tmp_path / "mine"))
    assert mine == tmp_path / "mine" and (mine / "controller.json").is_file()
    assert evaluate.resolve_source(run_dir, tau=1.15) == (run_dir / "world_model", hotter)
    with pytest.raises(ValueError, match="several controllers"):  # two at tau 1
        evaluate.resolve_source(run_dir, tau=1.0)


def test_a_start_rewritten_since_is_refused_not_resumed(tmp_path):
    """``init`` is a start by its weights: rewritten since (evolve run again on it), the
    folder evolved from the old one is not continued, and ``status`` calls it stale. A
    folder that recorded no init resumes and records it."""
    from dreamgym.policy import save_controller
    from dreamgym.train import provenance
    from dreamgym.train.provenance import StaleError

    run_dir = make_run(tmp_path)
    start = evolve.run(tiny_config(generations=2), run_dir)
    tuned = evolve.run(tiny_config(generations=1, init=str(start)), run_dir)
    record = tuned / provenance.INPUTS_FILE  # a folder of a version that did not record init
    kept = record.read_text()
    record.write_text(json.dumps({k: v for k, v in json.loads(kept).items() if k != "init"}))
    assert evolve.run(tiny_config(generations=2, init=str(start)), run_dir) == tuned  # resumed
    assert json.loads(record.read_text())["init"] == json.loads(kept)["init"]  # recorded now
    save_controller(start, torch.as_tensor(load_controller(start).params) + 0.1, "doom_take_cover")
    with pytest.raises(StaleError, match="its init has changed since"):
        evolve.run(tiny_config(generations=3, init=str(start)), run_dir)
    state = {stage: (s, note) for stage, s, note in provenance.status(run_dir)}
    assert (
        state[tuned.name][0] == "stale" and f"its init {start} has changed" in state[tuned.name][1]
    )
    assert state[start.name][0] == "current"  # a sibling's staleness does not pass on


def test_a_folder_an_older_version_named_by_its_settings_is_resumed_by_the_same_command(
    tmp_path,
):
    run_dir = make_run(tmp_path)
    old = evolve.run(tiny_config(generations=2, out=str(run_dir / "evolve_tau1")), run_dir)
    config = json.loads((old / evolve.CONFIG_NAME).read_text())
    del config["out"], config["dropout"]  # a config of before these keys were
    (old / evolve.CONFIG_NAME).write_text(json.dumps(config))
    assert evolve.run(tiny_config(generations=3), run_dir) == old  # found by its config
    assert [r["generation"] for r in metric_rows(old)] == [1, 2, 3]
    assert status_names(run_dir) == ["evolve_tau1"]
    other = evolve.run(tiny_config(generations=1, seed=4), run_dir)  # other settings: a new one
    assert other == run_dir / evolve.folder_name(tiny_config(seed=4))
    assert evolve.run(tiny_config(generations=3), run_dir) == old
    assert status_names(run_dir) == sorted([other.name, "evolve_tau1"])


def status_names(run_dir: Path) -> list[str]:
    """The evolve folders ``dreamgym status`` lists."""
    from dreamgym.train.provenance import status

    return [stage for stage, _, _ in status(run_dir) if stage.startswith("evolve")]


def test_metrics_after_a_kill_keep_each_checkpointed_row_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"timesteps": t, "x": i} for i, t in enumerate([0, 256, 512, 512, 768])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"timest')  # a torn line
    search.repair_metrics(path, "timesteps", 512)  # checkpointed at 512; 768 came after
    kept = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["timesteps"] for r in kept] == [0, 256, 512]
    last = {"generation": 3, "best": 1.0}  # a kill between the checkpoint and its row
    path.write_text("".join(json.dumps({"generation": g}) + "\n" for g in (1, 2)))
    search.repair_metrics(path, "generation", 3, last)
    assert [json.loads(x) for x in path.read_text().splitlines()][-1] == last
    search.repair_metrics(path, "generation", None)  # no checkpoint: nothing was kept
    assert path.read_text() == ""


def test_the_search_loop_tells_each_generation_and_flags_the_last():
    es = CMAES(3, popsize=6, seed=0)
    seen = []

    def fitness(X, generation):
        assert generation == es.generation + 1
        return -np.sum(X**2, axis=1), {"calls": generation}

    search.search(es, fitness, 4, lambda row, last: seen.append((row, last)))
    assert [(r["generation"], r["calls"], last) for r, last in seen] == [
        (1, 1, False), (2, 2, False), (3, 3, False), (4, 4, True),
    ]  # fmt: skip
    assert all(r["best"] >= r["mean"] >= r["worst"] and r["sigma"] > 0 for r, _ in seen)
    search.search(es, fitness, 4, lambda row, last: seen.append(row))  # done: nothing to do
    assert len(seen) == 4
    budget = search.Budget(0.05)
    search.search(es, lambda X, g: (time.sleep(0.02) or np.zeros(6), {}), 100,
                  lambda row, last: seen.append(last), budget)  # fmt: skip
    assert seen[-1] is True and 4 + 2 <= len(seen) <= 4 + 4 and budget.left() == "0:00"


def test_evolve_needs_a_world_model(tmp_path):
    run_dir, _ = open_run(tmp_path, "doom_take_cover")
    with pytest.raises(ValueError, match="fit-mdnrnn"):
        evolve.run(tiny_config(), run_dir)
    with pytest.raises(ValueError, match="trials"):
        evolve.run(tiny_config(trials=0), run_dir)


KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from dreamgym.train.evolve import EvolveConfig, run
run(EvolveConfig(tau=1.0, generations=100000, popsize=8, trials=3, max_steps=40,
                 eval_every=2, eval_rollouts=16, seed=3, threads=1), sys.argv[1])
"""


@pytest.mark.slow
def test_sigkill_during_evolve_then_rerun_continues(tmp_path):
    run_dir = make_run(tmp_path / "k")
    out = run_dir / evolve.folder_name(tiny_config())  # the script's settings
    metrics = out / evolve.METRICS_FILE
    sigkill_when(
        [KILL_SCRIPT, str(run_dir)],
        lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3,
        "evolve",
    )
    _, values = load_checkpoint(out / evolve.CMA_FILE)
    done = values["cma"]["es.countiter"]
    assert done >= 3
    evolve.run(tiny_config(generations=done + 2), run_dir)
    _, values = load_checkpoint(out / evolve.CMA_FILE)
    assert values["cma"]["es.countiter"] == done + 2
    assert [r["generation"] for r in metric_rows(out)] == list(range(1, done + 3))
    load_controller(out)
    straight = evolve.run(tiny_config(generations=done + 2), make_run(tmp_path / "s"))
    assert metric_rows(out) == metric_rows(straight)


@pytest.mark.slow
def test_evolve_with_fitness_in_the_real_game(tmp_path):
    pytest.importorskip("vizdoom")
    run_dir = make_run(tmp_path)
    cfg = tiny_config(real=True, generations=1, popsize=3, trials=2, max_steps=8,
                      eval_rollouts=2, workers=2, hidden=3)  # fmt: skip
    out = evolve.run(cfg, run_dir)
    assert out.name == evolve.folder_name(cfg)
    (row,) = metric_rows(out)
    assert row["best"] == row["worst"] == 8.0  # +1 per tic, nobody dies in 8 tics
    assert row["steps"] == 3 * 2 * 8
    info = json.loads((out / "controller.json").read_text())
    assert info["trained_in"] == "real" and info["tau"] is None
    assert info["eval"] == {"generation": 1, "mean": 8.0, "std": 0.0, "rollouts": 2}


def test_evolve_with_a_dropout_rate_has_its_own_folder_and_records_it(tmp_path):
    run_dir = make_run(tmp_path / "run")
    out = evolve.run(tiny_config(generations=2, dropout=0.0), run_dir)
    assert out.name == evolve.folder_name(tiny_config(dropout=0.0))
    assert out.name != evolve.folder_name(tiny_config())
    info = json.loads((out / "controller.json").read_text())
    assert info["dropout"] == 0.0
    with pytest.raises(ValueError, match="dropout"):
        evolve.run(tiny_config(dropout=0.0, real=True), run_dir)
    with pytest.raises(RunDirError, match="dropout"):
        evolve.evolve(tiny_config(generations=3, dropout=0.2), run_dir / "world_model", out)
