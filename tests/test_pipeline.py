"""The pipeline through the real CLI on the real games, on tiny budgets; kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamgym import data
from dreamgym.games import get_game
from dreamgym.train.common import CHECKPOINT, load_checkpoint
from dreamgym.train.export import STARTS_SIZE
from dreamgym.world_model import WorldModel, vae_digest

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, check=True, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "dreamgym.cli", *map(str, args)],
        capture_output=True, text=True, env=ENV, check=check, timeout=timeout,
    )  # fmt: skip


def start(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "dreamgym.cli", *map(str, args)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True,
    )  # fmt: skip


def kill(proc):
    """SIGKILL the job and every process it started (workers, game engines)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_for(predicate, proc, timeout=120):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.time() - t0 < timeout, "timed out waiting for the job's first artifact"
        time.sleep(0.05)


@pytest.mark.parametrize("game", ["doom_take_cover", "car_racing"])
def test_tiny_pipeline_through_cli(game, tmp_path):
    run = tmp_path / "run"
    cli("pipeline", game, "--preset", "tiny", "--run", run)
    assert json.loads((run / "run.json").read_text())["game"] == game
    assert not data.verify(run)
    assert len(data.kept_episodes(run)) >= 2
    vae = load_checkpoint(run / "vae" / CHECKPOINT)[1]
    assert vae["step"] > 0 and vae["config"]["z_dim"] == get_game(game).z_dim
    assert (run / "vae" / "metrics.jsonl").exists()
    with np.load(run / "latents.npz") as z:
        assert z["mu"].shape[0] == z["offsets"][-1]
    assert load_checkpoint(run / "mdnrnn" / CHECKPOINT)[1]["step"] == 3
    wm = WorldModel.load(run / "world_model", game=game)
    assert wm.z0_mu.shape[0] == len(data.kept_episodes(run))
    evolve_dirs = [p for p in run.iterdir() if p.name.startswith("evolve-")]
    assert len(evolve_dirs) == 1
    ev = evolve_dirs[0]
    assert (ev / "controller.safetensors").exists() and (ev / "metrics.jsonl").exists()
    results = list(ev.glob("eval*.json"))
    assert results, f"no evaluation JSON in {ev}"
    res = json.loads(results[0].read_text())
    assert len(res["returns"]) == 2 and np.isfinite(res["mean"])
    # Rerunning resumes: nothing is redone, the artifacts stay.
    before = load_checkpoint(run / "vae" / CHECKPOINT)[1]["step"]
    out = cli("pipeline", game, "--preset", "tiny", "--run", run)
    assert load_checkpoint(run / "vae" / CHECKPOINT)[1]["step"] == before
    assert "== evaluate" in out.stdout
    # Another game's command refuses the run directory.
    other = "car_racing" if game == "doom_take_cover" else "doom_take_cover"
    bad = cli("collect", other, "--run", run, "--episodes", "1", check=False)
    assert bad.returncode == 2 and "is for" in bad.stderr


def test_collect_survives_sigkill(tmp_path):
    run = tmp_path / "run"
    args = ("collect", "doom_take_cover", "--run", run, "--workers", "2", "--min-frames", "0")
    proc = start(*args, "--episodes", "400", "--max-steps", "60")
    wait_for(lambda: len(data.read_manifest(run)) >= 3, proc)
    kill(proc)
    kept = len(data.kept_episodes(run))
    assert not data.verify(run), "a shard listed in the manifest is corrupt"
    cli(*args, "--episodes", str(kept + 3), "--max-steps", "60")
    rows = data.read_manifest(run)
    assert len(data.kept_episodes(run)) >= kept + 3
    assert len({r["index"] for r in rows}) == len(rows), "an episode index was redone"
    assert not data.verify(run)
    for p in data.kept_episodes(run):
        assert len(data.read_episode(p)["frames"]) > 0


def test_fit_vae_survives_sigkill(tmp_path):
    run = tmp_path / "run"
    cli("collect", "doom_take_cover", "--run", run, "--episodes", "2", "--max-steps", "80",
        "--min-frames", "0")  # fmt: skip
    ckpt = run / "vae" / CHECKPOINT
    vae_args = ("fit-vae", run, "--batch-size", "8", "--checkpoint-every", "2", "--threads", "1")
    proc = start(*vae_args, "--epochs", "50")
    wait_for(lambda: ckpt.exists(), proc)
    time.sleep(0.5)
    kill(proc)
    step = load_checkpoint(ckpt)[1]["step"]  # loadable: the checkpoint was never half-written
    assert step >= 2
    cli(*vae_args, "--epochs", "2")
    total = sum(r["frames"] for r in data.read_manifest(run)) * 2 // 8
    final = load_checkpoint(ckpt)[1]
    assert final["step"] == max(step, total)
    rows = [json.loads(x) for x in (run / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] <= final["step"]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), "a resumed fit-vae logged a step twice"


def test_corrupt_shard_is_named(tmp_path):
    run = tmp_path / "run"
    cli("collect", "doom_take_cover", "--run", run, "--episodes", "1", "--max-steps", "30",
        "--min-frames", "0")  # fmt: skip
    shard = data.kept_episodes(run)[0]
    shard.write_bytes(shard.read_bytes()[:100])
    out = cli("fit-vae", run, "--batch-size", "4", "--epochs", "1", check=False)
    assert out.returncode == 2 and shard.name in out.stderr


def test_unknown_preset_and_game(tmp_path):
    out = cli("pipeline", "doom_take_cover", "--preset", "huge", "--run", tmp_path, check=False)
    assert out.returncode == 2 and "tiny" in out.stderr
    out = cli("collect", "pong", "--run", tmp_path, check=False)
    assert out.returncode != 0 and "doom_take_cover" in out.stderr


def test_presets_cover_every_stage():
    from dreamgym.cli import PIPELINE, _stages, load_preset
    from dreamgym.games import get_game
    from dreamgym.train.policies import check_collect_policy

    stages = _stages()
    for game in ("doom_take_cover", "car_racing"):
        for preset in ("tiny", "cpu", "paper"):
            cfg = load_preset(game, preset)
            for name in PIPELINE:
                cls, key = stages[name][0], name.replace("-", "_")
                entries = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
                assert entries
                for kwargs in entries:
                    if key == "collect":
                        kwargs = {**kwargs, "game": game}
                        check_collect_policy(get_game(game), kwargs.get("policy"))
                    cls(**kwargs)  # every field name in the preset is a real config field
    assert Path(__file__).parents[1].joinpath("training", "presets").is_dir()


def test_a_list_in_a_preset_runs_its_phases_in_order(tmp_path, monkeypatch):
    from dreamgym import cli as dg_cli
    from dreamgym.train import evaluate, export

    calls = []

    def stage(name):
        def fn(config, where):
            calls.append((name, config, where))
            return tmp_path / "evolve-x" if name == "evolve" else where

        return fn

    stages = {name: (dict, stage(name), "") for name in dg_cli.PIPELINE}
    monkeypatch.setattr(export, "assemble", lambda run_dir: calls.append(("assemble",)))
    monkeypatch.setattr(evaluate, "format_table", lambda result: "table")
    preset = tmp_path / "phases.json"
    phases = [{"epochs": 0.5}, {"epochs": 0.8, "lr": 3e-4, "danger_weight": 10}]
    top_ups = [{"episodes": 4}, {"episodes": 6, "controller": "c"}]
    preset.write_text(json.dumps({"collect": top_ups, "fit_vae": phases, "evolve": {}}))
    dg_cli.run_pipeline("doom_take_cover", str(preset), tmp_path / "run", stages)
    names = [c[0] for c in calls]
    assert names == ["collect", "collect", "fit-vae", "fit-vae", "encode", "fit-mdnrnn",
                     "assemble", "evolve", "evaluate"]  # fmt: skip
    assert [c[1] for c in calls[:2]] == [{**t, "game": "doom_take_cover"} for t in top_ups]
    assert [c[1] for c in calls[2:4]] == phases
    assert calls[-1][2] == tmp_path / "evolve-x"  # evaluate scores what evolve made


def test_collect_worker_killed_fails_fast_and_resumes(tmp_path):
    from dreamgym.workers import _descendants

    run = tmp_path / "run"
    args = ("collect", "doom_take_cover", "--run", run, "--workers", "2", "--min-frames", "0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamgym.cli", *map(str, args), "--episodes", "400",
         "--max-steps", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(data.read_manifest(run)) >= 2, proc)
        workers = [p for p in _descendants(proc.pid) if b"vizdoom" not in _cmdline(p)]
        workers = [p for p in workers if b"spawn_main" in _cmdline(p)]
        assert workers, "no collect worker found"
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)  # never a hang
    finally:
        if proc.poll() is None:
            kill(proc)
    assert proc.returncode == 2 and "worker process died" in err, err
    assert not data.verify(run)
    kept = len(data.kept_episodes(run))
    cli(*args, "--episodes", str(kept + 2), "--max-steps", "60")
    assert len(data.kept_episodes(run)) >= kept + 2 and not data.verify(run)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_fit_mdnrnn_survives_sigkill(tmp_path):
    run = tmp_path / "run"
    cli("collect", "doom_take_cover", "--run", run, "--episodes", "2", "--max-steps", "60",
        "--min-frames", "0")  # fmt: skip
    cli("fit-vae", run, "--batch-size", "8", "--epochs", "0.1", "--threads", "1")
    cli("encode", run, "--batch-size", "32")
    ckpt = run / "mdnrnn" / CHECKPOINT
    args = ("fit-mdnrnn", run, "--hidden", "16", "--batch-size", "2", "--seq-len", "20",
            "--checkpoint-every", "2", "--threads", "1")  # fmt: skip
    proc = start(*args, "--steps", "100000")
    wait_for(lambda: ckpt.exists(), proc)
    time.sleep(0.5)
    kill(proc)
    step = load_checkpoint(ckpt)[1]["step"]  # loadable: never half-written
    assert step >= 2
    cli(*args, "--steps", str(step + 3))
    assert load_checkpoint(ckpt)[1]["step"] == step + 3
    lines = (run / "mdnrnn" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines]
    assert steps == sorted(set(steps)), "a resumed fit-mdnrnn logged a step twice"
    assert WorldModel.load(run / "world_model", game="doom_take_cover").mdnrnn.config.hidden == 16


@pytest.mark.slow
def test_encode_after_more_collection_encodes_only_the_new_episodes(tmp_path):
    from dreamgym.train.encode import load_latents

    run = tmp_path / "run"
    collect = ("collect", "doom_take_cover", "--run", run, "--max-steps", "40", "--min-frames", "0",
               "--workers", "1")  # fmt: skip
    cli(*collect, "--episodes", "2")
    cli("fit-vae", run, "--batch-size", "8", "--epochs", "0.1", "--threads", "1")
    cli("encode", run, "--batch-size", "32")
    first = load_latents(run)
    cli(*collect, "--episodes", "3")
    out = cli("encode", run, "--batch-size", "32")
    assert "1/1" in out.stderr  # one episode encoded, not three
    grown = load_latents(run)
    n = first["offsets"][-1]
    assert list(grown["files"]) == [p.name for p in data.kept_episodes(run)]
    assert len(grown["offsets"]) == 4 and np.array_equal(grown["mu"][:n], first["mu"])
    (run / "latents.npz").unlink()
    cli("encode", run, "--batch-size", "32")
    again = load_latents(run)
    for key in ("mu", "logvar", "actions", "offsets"):
        np.testing.assert_allclose(again[key], grown[key], atol=1e-5)


def _run_encoded_by_a_world_model(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A tiny Doom run and two tiny world-model folders (other Vs); the run's frames
    are encoded with the first one's V."""
    from conftest import tiny_world_model

    run, wm_dirs = tmp_path / "run", [tmp_path / "wm0", tmp_path / "wm1"]
    cli("collect", "doom_take_cover", "--run", run, "--episodes", "2", "--max-steps", "30",
        "--min-frames", "0", "--workers", "1")  # fmt: skip
    for seed, folder in enumerate(wm_dirs):
        tiny_world_model("doom_take_cover", seed=seed).save(folder)
    cli("encode", run, "--world-model", wm_dirs[0])
    return run, wm_dirs


def test_encode_with_a_world_models_v(tmp_path):
    """--world-model encodes with an exported V (no fit-vae in the run); the file
    records it, so a rerun with the same V keeps it and another V re-encodes."""
    import torch
    from conftest import tiny_world_model

    from dreamgym.train.encode import load_latents
    from dreamgym.vae import frames_to_tensor

    run, wm_dirs = _run_encoded_by_a_world_model(tmp_path)
    first = load_latents(run)
    wm = WorldModel.load(wm_dirs[0])
    frames = np.concatenate([data.read_episode(p)["frames"] for p in data.kept_episodes(run)])
    with torch.no_grad():
        mu, logvar = wm.vae.encode(frames_to_tensor(frames))
    np.testing.assert_allclose(first["mu"], mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(first["logvar"], logvar.numpy(), atol=1e-5)
    assert str(first["vae_source"]) == vae_digest(wm_dirs[0])
    assert "encode" not in cli("encode", run, "--world-model", wm_dirs[0]).stderr  # kept
    other_m = WorldModel.load(wm_dirs[0])  # a new M in that folder: V, and the latents, stay
    other_m.mdnrnn = tiny_world_model("doom_take_cover", seed=9).mdnrnn
    other_m.save(wm_dirs[0])
    assert "encode" not in cli("encode", run, "--world-model", wm_dirs[0]).stderr
    cli("encode", run, "--world-model", wm_dirs[1])
    assert not np.allclose(load_latents(run)["mu"], first["mu"])
    # M fitted on those latents is assembled with the V that encoded them
    fit = ("fit-mdnrnn", run, "--hidden", "16", "--batch-size", "2", "--seq-len", "10",
           "--steps", "2", "--open-loop-steps", "3", "--open-loop-every", "4")  # fmt: skip
    cli(*fit)
    assembled = WorldModel.load(run / "world_model")
    for key, value in WorldModel.load(wm_dirs[1]).vae.state_dict().items():
        assert torch.equal(assembled.vae.state_dict()[key], value)
    assert assembled.mdnrnn.config.hidden == 16
    assert 0 < len(assembled.starts) <= STARTS_SIZE  # real states of the run's episodes
    row = json.loads((run / "mdnrnn" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["open_loop_nll"] > 0
    # a world_model/ that links to another folder is never written through
    (run / "world_model").rename(tmp_path / "assembled")
    (run / "world_model").symlink_to(wm_dirs[0])
    (run / "mdnrnn" / CHECKPOINT).unlink()
    out = cli(*fit, check=False)
    assert out.returncode != 0 and "Remove the link" in out.stderr
    assert torch.equal(WorldModel.load(wm_dirs[0]).z0_mu, tiny_world_model("doom_take_cover").z0_mu)
    out = cli("encode", run, "--world-model", tmp_path, check=False)
    assert out.returncode != 0 and "weights.safetensors not found" in out.stderr
    out = cli("encode", run, check=False)  # the run has no V of its own
    assert out.returncode != 0 and "run fit-vae, or pass --world-model" in out.stderr


def test_collect_with_a_controller_keeps_real_frames_and_its_noisy_actions(tmp_path):
    """The paper's iterative procedure: a dream-trained controller drives the real game."""
    from dreamgym.policy import save_controller
    from dreamgym.train.collect import CollectConfig, run
    from dreamgym.train.common import open_run

    run_dir, _ = open_run(tmp_path / "run", "doom_take_cover")
    wm = WorldModel.create("doom_take_cover", n_bank=1, hidden=8)
    wm.save(run_dir / "world_model")
    n = wm.mdnrnn.config.z_dim + 2 * 8
    save_controller(tmp_path / "c", np.full(n, 0.05), "doom_take_cover")
    base = dict(game="doom_take_cover", episodes=2, workers=1, min_frames=0, max_steps=15)
    run(CollectConfig(**base, controller=str(tmp_path / "c"), noise=0.0), run_dir)
    eps = [data.read_episode(p) for p in data.kept_episodes(run_dir)]
    assert len(eps) == 2
    for ep in eps:
        assert ep["frames"].shape == (15, 64, 64, 3) and ep["frames"].dtype == np.uint8
        assert len(np.unique(ep["actions"])) > 1  # the controller reacts to what it sees
    with pytest.raises(ValueError, match="not both"):
        run(CollectConfig(**{**base, "episodes": 3}, controller=str(tmp_path / "c"),
                          policy="random"), run_dir)  # fmt: skip
    with pytest.raises(ValueError, match="noise"):
        run(CollectConfig(**{**base, "episodes": 3}, controller=str(tmp_path / "c"), noise=-1),
            run_dir)  # fmt: skip
    run(CollectConfig(**{**base, "episodes": 3}, controller=str(tmp_path / "c"), noise=0.5,
                      noise_space="output"), run_dir)  # fmt: skip
    assert len(data.kept_episodes(run_dir)) == 3
    with pytest.raises(ValueError, match="noise_space"):
        run(CollectConfig(**{**base, "episodes": 4}, controller=str(tmp_path / "c"),
                          noise_space="z"), run_dir)  # fmt: skip


def test_collect_drives_a_controller_with_the_m_it_was_trained_with(tmp_path):
    """[z, h] controllers read M's state: collect finds the M beside the controller."""
    from dreamgym.policy import save_controller
    from dreamgym.train.collect import _controller_world_model

    run_dir = tmp_path / "run"
    wm = WorldModel.create("car_racing", n_bank=1, hidden=8)
    params = np.zeros((wm.mdnrnn.config.z_dim + 8 + 1) * 3)
    for folder in (tmp_path / "model", tmp_path / "other" / "world_model"):
        wm.save(folder)
    save_controller(tmp_path / "model", params, "car_racing")  # a model folder
    save_controller(tmp_path / "other" / "evolve_tau1", params, "car_racing")  # an evolve dir
    save_controller(tmp_path / "bare", params, "car_racing")
    assert _controller_world_model(tmp_path / "model", run_dir) == tmp_path / "model"
    evolved = _controller_world_model(tmp_path / "other" / "evolve_tau1", run_dir)
    assert evolved == tmp_path / "other" / "world_model"
    assert _controller_world_model(tmp_path / "bare", run_dir) == run_dir / "world_model"


def test_every_stage_option_has_its_config_fields_docstring_as_help(capsys):
    import dataclasses

    from dreamgym import cli as dreamgym_cli

    for name, (cls, _, _) in dreamgym_cli._stages().items():
        docs = dreamgym_cli.field_docs(cls)
        undocumented = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not undocumented, f"{cls.__name__}: fields without a docstring: {undocumented}"
        with pytest.raises(SystemExit):
            dreamgym_cli.main([name, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        for field, doc in docs.items():
            if field == "game" and name == "collect":
                continue  # the positional argument
            assert " ".join(doc.split()[:6]) in out, f"dreamgym {name} --help lacks: {doc}"


def test_fit_mdnrnn_trains_an_ensemble_with_dropout(tmp_path):
    """--members 2 --dropout 0.1: two Ms sharing V in one world-model folder; a rerun with
    a third member trains only it."""
    run = tmp_path / "run"
    cli("collect", "doom_take_cover", "--run", run, "--episodes", "2", "--max-steps", "60",
        "--min-frames", "0")  # fmt: skip
    cli("fit-vae", run, "--batch-size", "8", "--epochs", "0.1", "--threads", "1")
    cli("encode", run, "--batch-size", "32")
    args = ("fit-mdnrnn", run, "--hidden", "16", "--batch-size", "2", "--seq-len", "20",
            "--steps", "3", "--dropout", "0.1", "--threads", "1")  # fmt: skip
    cli(*args, "--members", "2")
    wm = WorldModel.load(run / "world_model")
    assert len(wm.members) == 2 and wm.dropout == 0.1
    first = (run / "mdnrnn" / "member1" / CHECKPOINT).stat().st_mtime_ns
    cli(*args, "--members", "3")
    assert (run / "mdnrnn" / "member1" / CHECKPOINT).stat().st_mtime_ns == first
    wm = WorldModel.load(run / "world_model")
    assert len(wm.members) == 3
    a, b = (m.state_dict()["head.weight"] for m in wm.members[:2])
    assert not np.allclose(a.numpy(), b.numpy())
    assert len(wm.starts.members) == 3  # the bank holds every member's state at each start
    assert not torch.equal(wm.starts.members[1].h, wm.starts.members[2].h)
    obs, _ = gym.make("DreamDoom-v0", world_model=wm, starts="real").reset(seed=0)
    H = wm.mdnrnn.config.hidden
    assert any(np.array_equal(obs[-H:], h) for h in wm.starts.lstm.h.numpy())  # C reads member 0


def test_fit_mdnrnn_starts_from_a_world_models_m(tmp_path):
    """--init: M starts from another folder's M (the one its V encoded the latents); a V
    or an M shape other than the run's is refused in one line, with nothing written."""
    run, wm_dirs = _run_encoded_by_a_world_model(tmp_path)
    args = ("fit-mdnrnn", run, "--batch-size", "2", "--seq-len", "20", "--steps", "2",
            "--threads", "1", "--lr", "1e-9", "--lr-final", "1e-9")  # fmt: skip
    for bad, says in (((wm_dirs[1], "--hidden", "16"), "another V"),
                      ((wm_dirs[0], "--hidden", "8"), "this fit asks for")):  # fmt: skip
        out = cli(*args, "--init", *bad, check=False)
        assert out.returncode != 0 and says in out.stderr.strip().splitlines()[-1]
        assert not (run / "mdnrnn").exists()
    cli(*args, "--init", wm_dirs[0], "--hidden", "16", "--dropout", "0.1")
    fitted, start = WorldModel.load(run / "world_model"), WorldModel.load(wm_dirs[0])
    assert fitted.dropout == 0.1
    for key, value in start.mdnrnn.state_dict().items():
        np.testing.assert_allclose(fitted.mdnrnn.state_dict()[key].numpy(), value.numpy(),
                                   atol=1e-6, err_msg=key)  # fmt: skip


def test_collect_workers_exit_when_the_collect_process_is_killed(tmp_path):
    """SIGKILL of collect (no chance to close its pool): its workers and their games exit
    on their own within seconds, instead of playing on as orphans."""
    from dreamgym.workers import _descendants

    run = tmp_path / "run"
    proc = start("collect", "doom_take_cover", "--run", run, "--workers", "2", "--min-frames",
                 "0", "--episodes", "400", "--max-steps", "60")  # fmt: skip
    wait_for(lambda: len(data.read_manifest(run)) >= 2, proc)
    left = _descendants(proc.pid)
    assert any(b"spawn_main" in _cmdline(p) for p in left), "no collect worker found"
    os.kill(proc.pid, signal.SIGKILL)  # collect alone, not its process group
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_cmdline(p) for p in left):
        time.sleep(0.2)
    orphans = [p for p in left if _cmdline(p)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers or games outlived collect"
