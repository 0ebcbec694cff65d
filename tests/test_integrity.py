"""Wrong, stale or broken inputs, tried as a user would on a tiny run, through the real CLI.

Each failure must exit 2 with one line that names the file or option, and leave
the run exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_pipeline import cli

from dreamgym import data
from dreamgym._io import read_jsonl
from dreamgym.policy import save_controller
from dreamgym.train import evolve
from dreamgym.train.common import CHECKPOINT

pytestmark = pytest.mark.slow
TINY = {
    "collect": ("--episodes", "3", "--max-steps", "80", "--min-frames", "0", "--workers", "1"),
    "fit-vae": ("--epochs", "0.5", "--batch-size", "16", "--checkpoint-every", "5"),
    "encode": ("--batch-size", "64",),
    "fit-mdnrnn": ("--hidden", "16", "--steps", "3", "--batch-size", "4", "--seq-len", "40",
                   "--checkpoint-every", "2"),
    "evolve": ("--generations", "2", "--popsize", "4", "--trials", "2", "--max-steps", "40",
               "--eval-every", "2", "--eval-rollouts", "8"),
}  # fmt: skip
EVOLVED = evolve.folder_name(evolve.EvolveConfig(popsize=4, trials=2, max_steps=40))
"""The folder TINY's evolve writes."""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny Doom run: collect to evolve (evaluate plays the real game: left out)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    cli("collect", "doom_take_cover", "--run", run, *TINY["collect"])
    for stage in ("fit-vae", "encode", "fit-mdnrnn", "evolve"):
        cli(stage, run, *TINY[stage])
    return run


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run for one test to spoil."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run", symlinks=True))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(*args, names: str | tuple[str, ...], unchanged: Path | None = None):
    """Run a command that must fail cleanly: exit 2, one line naming ``names``, on a line of
    its own (a progress bar's line ends in a carriage return, which splits lines here too);
    and, with ``unchanged``, leave that folder exactly as it was."""
    before = snapshot(unchanged) if unchanged else None
    out = cli(*args, check=False)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr
    line = out.stderr.splitlines()[-1]
    assert line.startswith(f"dreamgym {args[0]}: error: "), out.stderr
    for name in (names,) if isinstance(names, str) else names:
        assert str(name) in line, line
    if unchanged:
        assert snapshot(unchanged) == before, f"{args} changed files in {unchanged}"
    return line


def status(run: Path) -> dict[str, str]:
    out = cli("status", run).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


# ---------------------------------------------------------------- provenance


def test_a_new_v_makes_m_world_model_and_controller_stale(run):
    assert set(status(run).values()) == {"current"}
    cli("fit-vae", run, *TINY["fit-vae"][2:], "--epochs", "1")  # trains V further: a new V
    assert status(run)["encode"] == "stale" and status(run)[EVOLVED] == "stale"
    refused("evolve", run, *TINY["evolve"], names=("world_model", "encode"), unchanged=run)
    cli("encode", run, *TINY["encode"])  # re-encodes with the new V
    line = refused("fit-mdnrnn", run, *TINY["fit-mdnrnn"], names=("mdnrnn", "fit-vae"),
                   unchanged=run)  # fmt: skip
    assert "delete" in line
    assert status(run)["fit-mdnrnn"] == "stale"
    shutil.rmtree(run / "mdnrnn")
    cli("fit-mdnrnn", run, *TINY["fit-mdnrnn"])  # fits M on the new latents, reassembles
    assert status(run)["world_model"] == "current"
    refused("evolve", run, *TINY["evolve"], names=(EVOLVED, "fit-mdnrnn"), unchanged=run)
    shutil.rmtree(run / EVOLVED)
    cli("evolve", run, *TINY["evolve"])
    assert set(status(run).values()) == {"current"}


def test_more_episodes_keep_what_was_built_and_the_pipeline_shows_status(run):
    cli("collect", "doom_take_cover", "--run", run, *TINY["collect"][2:], "--episodes", "4")
    assert status(run)["fit-vae"] == "behind" and status(run)["encode"] == "behind"
    cli("encode", run, *TINY["encode"])  # encodes the new episode only; M stays valid
    assert status(run)["encode"] == "current" and status(run)["fit-mdnrnn"] == "behind"
    cli("fit-mdnrnn", run, *TINY["fit-mdnrnn"][:2], "--steps", "5", *TINY["fit-mdnrnn"][4:])
    steps = [r["step"] for r in read_jsonl(run / "mdnrnn" / "metrics.jsonl")]
    assert len(steps) == len(set(steps))


def test_an_older_dreamgyms_checkpoint_pt_is_named_and_deleting_it_retrains(run):
    for folder in ("vae", "mdnrnn"):
        (run / folder / CHECKPOINT).rename(run / folder / "checkpoint.pt")
    refused("fit-vae", run, *TINY["fit-vae"], names=("vae/checkpoint.pt", "delete it"),
            unchanged=run)  # fmt: skip
    refused("evolve", run, *TINY["evolve"], names=("mdnrnn/checkpoint.pt", "delete it"),
            unchanged=run)  # fmt: skip
    assert status(run)["fit-vae"] == "stale" and status(run)["fit-mdnrnn"] == "stale"
    (run / "vae" / "checkpoint.pt").unlink()
    cli("fit-vae", run, *TINY["fit-vae"])
    assert status(run)["fit-vae"] == "current"


# ---------------------------------------------------------------- integrity


def test_a_replaced_or_truncated_shard_is_named_then_recollected(run):
    shards = data.kept_episodes(run)
    shutil.copy2(shards[1], shards[0])  # another episode's file
    more = ("fit-vae", run, *TINY["fit-vae"][2:], "--epochs", "1")  # V trains on: reads shards
    refused(*more, names=shards[0].name, unchanged=run)
    assert status(run)["collect"] == "stale"
    shards[2].write_bytes(shards[2].read_bytes()[:300])  # truncated
    out = cli("collect", "doom_take_cover", "--run", run, *TINY["collect"])
    assert shards[0].name in out.stdout and shards[2].name in out.stdout
    assert not data.verify(run) and len(data.kept_episodes(run)) == 3
    assert (shards[0].parent / (shards[0].name + ".bad")).exists()
    rows = data.read_manifest(run)
    assert len({r["index"] for r in rows}) == len(rows)
    # V was fitted on episodes that are gone: refused, not silently resumed
    refused(*more, names=("vae", "collect"), unchanged=run)


# ---------------------------------------------------------------- finite or nothing


def test_a_diverging_fit_stops_and_keeps_the_last_good_checkpoint(run):
    args = ("--hidden", "16", "--steps", "40", "--batch-size", "4", "--seq-len", "40",
            "--lr", "1e6", "--lr-final", "1e6", "--grad-clip", "1e9")  # fmt: skip
    before = snapshot(run)
    line = refused("fit-mdnrnn", run, *args, names=("the loss is", CHECKPOINT, "--lr"))
    after = snapshot(run)
    for key in (f"mdnrnn/{CHECKPOINT}", "world_model/weights.safetensors"):
        assert after[key] == before[key], key
    assert "kept" in line


def test_non_finite_weights_are_refused_on_load_and_export(run, tmp_path):
    weights = run / "world_model" / "weights.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.startswith("mdnrnn."))
    tensors[key][0] = float("nan")
    save_file(tensors, weights)
    refused("evolve", run, *TINY["evolve"], names=("weights.safetensors", key), unchanged=run)
    dest = tmp_path / "export"
    refused("export", run, dest, names="weights.safetensors", unchanged=run)
    assert not dest.exists()
    with pytest.raises(ValueError, match="NaN"):
        gym.make("DreamDoom-v0", world_model=str(run / "world_model"))


# ---------------------------------------------------------------- validate before writing


def test_mismatches_are_one_line_and_leave_the_run_as_it_was(run, tmp_path):
    refused("fit-mdnrnn", run, "--hidden", "32", names=("hidden=16", "hidden=32"), unchanged=run)
    refused("fit-vae", run, "--z-dim", "32", "--epochs", "2", names="z_dim", unchanged=run)
    car = save_controller(tmp_path / "car", np.zeros(867), "car_racing")
    dest = tmp_path / "model"
    refused("export", run, dest, "--controller", car, names=("--controller", "car_racing"),
            unchanged=run)  # fmt: skip
    refused("export", run, dest, "--controller", "/nope", names="/nope", unchanged=run)
    assert not dest.exists()
    other = save_controller(tmp_path / "other", np.zeros(64 + 2 * 32), "doom_take_cover")
    refused("evaluate", run, "--controller", other, names=("--controller", str(other)),
            unchanged=run)  # fmt: skip
    assert cli("export", run, dest, "--controller", run / EVOLVED).returncode == 0
    assert sorted(p.name for p in dest.iterdir()) == [
        "MODEL_CARD.md", "config.json", "controller.json", "controller.safetensors",
        "weights.safetensors",
    ]  # fmt: skip


def test_broken_files_and_bad_options_get_one_line(run, tmp_path):
    latents = run / "latents.npz"
    good = latents.read_bytes()
    latents.write_bytes(good[:300])
    refused("fit-mdnrnn", run, *TINY["fit-mdnrnn"], names="latents.npz", unchanged=run)
    latents.write_bytes(good)
    meta = run / "run.json"
    good = meta.read_text()
    meta.write_text(good[:10])
    refused("fit-vae", run, names="run.json", unchanged=run)
    meta.write_text(good)
    ctrl = Path(shutil.copytree(run / EVOLVED, tmp_path / "ctrl"))
    info = json.loads((ctrl / "controller.json").read_text())
    (ctrl / "controller.json").write_text(json.dumps({**info, "in_dim": "abc"}))
    refused("evaluate", run, "--controller", ctrl, names=("controller.json", "in_dim"),
            unchanged=run)  # fmt: skip
    wm = Path(shutil.copytree(run / "world_model", tmp_path / "wm"))
    cfg = json.loads((wm / "config.json").read_text())
    cfg["mdnrnn"]["action_dim"] = 3
    (wm / "config.json").write_text(json.dumps(cfg))
    refused("evaluate", wm, "--controller", run / EVOLVED, names="config.json")
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    refused("evaluate", run, "--device", device, names="--device", unchanged=run)
    refused("evaluate", run, "--max-steps", "-3", names="--max-steps", unchanged=run)
    refused("fit-vae", run, "--lr", "nan", "--epochs", "2", names="--lr", unchanged=run)
    refused("collect", "doom_take_cover", "--run", run, "--episodes", "0", names="--episodes",
            unchanged=run)  # fmt: skip
    debug = cli("evaluate", run, "--max-steps", "-3", "--debug", check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ---------------------------------------------------------------- a finished single dream


def test_a_finished_single_dream_refuses_to_step():
    from conftest import tiny_world_model

    wm = tiny_world_model("doom_take_cover", done_bias=-1.0)
    env = gym.make("DreamDoom-v0", world_model=wm, disable_env_checker=True)
    env.reset(seed=0)
    done, steps = False, 0
    while not done:
        _, _, terminated, truncated, _ = env.step(np.array([0.0], np.float32))
        done, steps = terminated or truncated, steps + 1
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        env.step(np.array([0.0], np.float32))
    with pytest.raises(ValueError, match="reset"):  # as the vector env in DISABLED mode
        env.step(np.array([0.0], np.float32))
    env.reset()
    env.step(np.array([0.0], np.float32))  # a reset makes it playable again
