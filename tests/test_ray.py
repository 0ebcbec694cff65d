"""Real-game workers on Ray: the same files and scores as local workers, killed workers and
drivers, bad options. A local Ray of 2 CPUs is started once for the module."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamgym import data, ray_pool
from dreamgym.policy import controller_config, save_controller
from dreamgym.pools import check_backend, open_pool
from dreamgym.train import evaluate, evolve
from dreamgym.train.collect import CollectConfig
from dreamgym.train.collect import run as collect
from dreamgym.workers import WorkerDiedError, _descendants, _start_time

torch.set_num_threads(1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DOOM = "doom_take_cover"


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for this module's tests, shut down after them."""
    import ray

    assert ray_pool.connect(None, num_cpus=2), "a Ray instance was already running"
    assert ray.cluster_resources()["CPU"] == 2
    yield ray
    ray.shutdown()


def cli(*args, check=True, timeout=600, pre="pass"):
    """The dreamgym command in a subprocess (``pre``: Python run before it)."""
    code = f"import sys; {pre}; from dreamgym.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, env=ENV, check=check, timeout=timeout,
    )  # fmt: skip


def shards(run_dir: Path) -> dict[int, tuple]:
    """index -> (manifest row, shard bytes) of every kept episode."""
    folder = run_dir / data.EPISODES_DIR
    return {r["index"]: (r, (folder / r["file"]).read_bytes()) for r in data.kept_rows(run_dir)}


# ---------------------------------------------------------------- options, without Ray


def test_nothing_imports_ray_until_a_ray_pool_opens():
    code = (
        "import sys, dreamgym, dreamgym.cli, dreamgym.rollouts, dreamgym.workers; "
        "from dreamgym.train import collect, evaluate, evolve, panel; dreamgym.cli._stages(); "
        "from dreamgym.pools import check_backend; check_backend('local'); "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, timeout=300)


def test_without_ray_the_ray_backend_names_the_extra_and_writes_nothing(tmp_path):
    block = "sys.modules['ray'] = None"  # as if Ray were not installed
    run = tmp_path / "run"
    out = cli("collect", DOOM, "--run", run, "--backend", "ray", check=False, pre=block)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "pip install 'dreamgym[ray]'" in out.stderr
    assert not run.exists()


def test_bad_backend_options_are_one_line_and_write_nothing(tmp_path):
    run = tmp_path / "run"
    cases = [
        (("collect", DOOM, "--run", run, "--backend", "foo"), "expected one of local, ray"),
        (("collect", DOOM, "--run", run, "--ray-address", "127.0.0.1:6379"), "--backend ray"),
        (("evaluate", run, "--dream", "--backend", "ray"), "for the real game"),
        (("evolve", run, "--backend", "ray"), "goes with --real"),
        (("evolve", run, "--real", "--backend", "ray", "--ray-address", " "), "HOST:PORT"),
        (
            ("collect", DOOM, "--run", run, "--backend", "ray", "--ray-address", "127.0.0.1:1"),
            "nothing answers at 127.0.0.1:1",
        ),
        (("evaluate", run, "--backend", "ray", "--ray-address", "no-port"), "HOST:PORT"),
    ]
    for args, message in cases:
        out = cli(*args, check=False)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert out.stderr.startswith("dreamgym ") and out.stderr.strip().count("\n") == 0
        assert not run.exists(), args
    with pytest.raises(ValueError, match="--backend"):
        check_backend("Ray")


# ---------------------------------------------------------------- the pool itself


def test_ray_pool_hands_back_results_and_task_errors_and_stops_on_a_failing_start(local_ray):
    with open_pool("ray", 2, os.getpid) as pool:
        futures = {pool.submit(math.sqrt, float(x)): x for x in (4, 9, 16, -1)}
        pending, results = set(futures), {}
        while pending:
            done, pending = pool.wait_first(pending)
            for fut in done:
                x = futures[fut]
                if x < 0:  # the task's own error reaches the caller; it is not retried
                    with pytest.raises(ValueError, match="math domain error"):
                        fut.result()
                else:
                    results[x] = fut.result()
        assert results == {4: 2.0, 9: 3.0, 16: 4.0} and pool.retried == 0
    pool = open_pool("ray", 1, int, ("not a number",))  # every start fails the same way
    fut = pool.submit(math.sqrt, 4.0)
    with pytest.raises(WorkerDiedError, match="could not start its game"):
        pool.wait_first({fut})
    assert local_ray.is_initialized()  # a Ray it did not start is left running


# ---------------------------------------------------------------- same files, same scores


@pytest.mark.slow
def test_collect_through_ray_writes_the_local_backends_shards(local_ray, tmp_path):
    base = dict(game=DOOM, episodes=4, workers=2, max_steps=30, min_frames=0, seed=3)
    collect(CollectConfig(**base), tmp_path / "local")
    collect(CollectConfig(**base, backend="ray"), tmp_path / "ray")
    local, ray = shards(tmp_path / "local"), shards(tmp_path / "ray")
    assert sorted(local) == [0, 1, 2, 3] and local == ray  # rows and bytes alike
    assert not data.verify(tmp_path / "ray")
    # a controller driving the game: the actors get the loaded world model and controller
    from conftest import tiny_world_model

    wm = tiny_world_model(DOOM)
    wm.save(tmp_path / "model")
    n = controller_config(wm).num_params
    save_controller(tmp_path / "model", np.random.default_rng(0).normal(0, 0.3, n), DOOM)
    driven = dict(base, episodes=2, controller=str(tmp_path / "model"), noise=0.2)
    collect(CollectConfig(**driven), tmp_path / "local_c")
    collect(CollectConfig(**driven, backend="ray"), tmp_path / "ray_c")
    local, ray = shards(tmp_path / "local_c"), shards(tmp_path / "ray_c")
    assert sorted(local) == [0, 1] and local == ray


@pytest.mark.slow
def test_real_evaluation_and_evolve_real_through_ray_match_local(local_ray, tmp_path):
    from conftest import tiny_world_model
    from test_evaluate import make_run, random_params

    wm = tiny_world_model(DOOM)
    run_dir = make_run(tmp_path, wm, random_params(wm, scale=1.0))
    reports = {}
    for backend in ("local", "ray"):
        out = str(tmp_path / f"{backend}.json")
        cfg = evaluate.EvaluateConfig(
            episodes=3, workers=2, max_steps=150, seed=7, backend=backend, output=out
        )
        reports[backend] = json.loads(evaluate.run(cfg, run_dir).read_text())
    keys = ("returns", "seeds", "mean", "std", "min", "max", "episodes", "mode")
    assert {k: reports["ray"][k] for k in keys} == {k: reports["local"][k] for k in keys}
    assert reports["ray"]["config"]["backend"] == "ray"
    assert len(set(reports["local"]["returns"])) > 1, "episodes that differ, not a constant"
    tiny = dict(real=True, popsize=3, trials=1, generations=1, eval_every=1, eval_rollouts=2,
                max_steps=60, workers=2)  # fmt: skip
    for backend in ("local", "ray"):
        cfg = evolve.EvolveConfig(**tiny, backend=backend, out=str(tmp_path / f"evolve_{backend}"))
        evolve.evolve(cfg, run_dir / "world_model", cfg.out)
    rows = {
        b: [json.loads(x) for x in (tmp_path / f"evolve_{b}" / "metrics.jsonl").open()]
        for b in ("local", "ray")
    }
    keys = ("generation", "best", "mean", "worst", "sigma", "steps", "eval_mean")
    assert [{k: r[k] for k in keys} for r in rows["ray"]] == [
        {k: r[k] for k in keys} for r in rows["local"]
    ]
    weights = [(tmp_path / f"evolve_{b}" / "controller.safetensors").read_bytes()
               for b in ("local", "ray")]  # fmt: skip
    assert weights[0] == weights[1]


# ---------------------------------------------------------------- kills


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _kill_an_actor_when(ready, killed: list, finished: threading.Event) -> None:
    """Once ``ready()``, SIGKILL one Ray actor running a game (a child of this process's
    Ray) as soon as one is seen running (between episodes both can be idle); note (its
    pid, its games) in ``killed``; gives up once ``finished`` is set."""
    deadline = time.time() + 120
    while time.time() < deadline and not ready():
        time.sleep(0.05)
    while time.time() < deadline and not finished.is_set():
        procs = _descendants(os.getpid())
        actors = [p for p in procs if _cmdline(p).startswith(b"ray::GameActor.run")]
        if actors:
            games = _descendants(actors[0])
            os.kill(actors[0], signal.SIGKILL)
            killed.append((actors[0], games))
            return
        time.sleep(0.01)


@pytest.mark.slow
def test_a_killed_ray_worker_costs_only_its_episode(local_ray, tmp_path, capfd):
    base = dict(game=DOOM, episodes=8, workers=2, max_steps=100, min_frames=0, seed=11)
    run_dir, killed, finished = tmp_path / "ray", [], threading.Event()
    rows_landed = lambda: len(data.read_manifest(run_dir)) >= 1  # noqa: E731
    killer = threading.Thread(target=_kill_an_actor_when, args=(rows_landed, killed, finished))
    killer.start()
    collect(CollectConfig(**base, backend="ray"), run_dir)
    finished.set()
    killer.join()
    assert killed, "no Ray actor was found to kill"
    ((pid, games),) = killed
    assert "a Ray worker died" in capfd.readouterr().err, "no episode was in flight on it"
    assert not any(_start_time(g) == start for g, start in games.items()), "a game was left"
    rows = data.read_manifest(run_dir)
    assert sorted(r["index"] for r in rows) == list(range(8)), "an episode missing or twice"
    assert not data.verify(run_dir)
    for r in rows:
        ep = data.read_episode(run_dir / data.EPISODES_DIR / r["file"], sha=r["sha256"])
        assert len(ep["frames"]) == r["frames"] > 0
    collect(CollectConfig(**base), tmp_path / "local")  # the retried episode: the same file
    assert shards(run_dir) == shards(tmp_path / "local")


def _session(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_killed_ray_driver_resumes_and_leaves_no_process(tmp_path):
    run = tmp_path / "run"
    args = ("collect", DOOM, "--run", run, "--min-frames", "0", "--max-steps", "60",
            "--backend", "ray")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamgym.cli", *map(str, args), "--episodes", "400"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 180
        while len(data.read_manifest(run)) < 3:
            assert proc.poll() is None and time.time() < deadline, "collect never got going"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray, the actors, the games
        proc.wait()
    deadline = time.time() + 20
    while _session(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _session(proc.pid), "a process of the killed job was left behind"
    assert not data.verify(run)
    kept = len(data.kept_episodes(run))
    cli(*args, "--episodes", kept + 3)
    rows = data.read_manifest(run)
    assert len(rows) == kept + 3 and len({r["index"] for r in rows}) == len(rows)
    assert not data.verify(run)
