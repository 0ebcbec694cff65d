"""Assemble V + M + the banks of real starts into a WorldModel, and export a model folder.

``assemble(run_dir)`` writes ``run_dir/world_model/`` (what evolve and the dream
read); ``export(run_dir, dest)`` copies it with the chosen controller into a
model folder and writes a MODEL_CARD.md skeleton filled with the run's numbers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from dreamgym import data
from dreamgym._io import METRICS_FILE, WriteError, read_jsonl
from dreamgym._version import __version__
from dreamgym.policy import ControllerError, check_reads, read_controller
from dreamgym.starts import RealStarts
from dreamgym.train import provenance
from dreamgym.train.common import (
    LATENTS,
    MDN_DIR,
    VAE_DIR,
    WORLD_MODEL_DIR,
    RunDirError,
    checkpoint_path,
    member_count,
    open_run,
    world_model_dest,
)
from dreamgym.train.encode import load_latents
from dreamgym.train.fit_mdnrnn import load_trained_mdnrnn
from dreamgym.train.fit_vae import load_trained_vae
from dreamgym.world_model import WEIGHTS_FILE, WorldModel, vae_digest

STARTS_EVERY = 10
"""The bank of real states holds every STARTS_EVERY-th frame of the run's episodes..."""
STARTS_SIZE = 2048
"""...or a random subset of this many (CarRacing: 2.3 MB per 1,000 rows of mu, logvar, h, c)."""


def _encoding_vae(run_dir: Path, game: str, lat: dict):
    """The V that encoded the run's latents: its fit-vae checkpoint, or the world-model
    folder's V that ``encode --world-model`` used (checked unchanged since)."""
    if int(lat["vae_step"]) >= 0:
        return load_trained_vae(run_dir)
    folder, source = Path(str(lat["vae_folder"])), str(lat["vae_source"])
    # latents written before V's own digest name the whole weights file
    now = vae_digest(folder) if source.startswith("vae:") else data.sha256(folder / WEIGHTS_FILE)
    if now != source:
        raise RunDirError(
            f"{run_dir / LATENTS}: encoded with the V of {folder}, whose weights have changed "
            "since; rerun encode"
        )
    return WorldModel.load(folder, game=game).vae


def assemble(run_dir) -> Path:
    """WorldModel from the run's V (or the one that encoded it) and M, its real first
    frames, and a bank of real states along its episodes (``RealStarts``)."""
    run_dir, game = open_run(run_dir)
    dest = world_model_dest(run_dir)
    if not checkpoint_path(run_dir / MDN_DIR, "fit-mdnrnn").exists():
        raise RunDirError(f"{run_dir}: no trained M yet; run fit-mdnrnn first")
    lat = load_latents(run_dir)
    inputs = provenance.assembly_inputs(run_dir)
    if (dest / WEIGHTS_FILE).exists() and provenance.recorded(dest) == inputs:
        return dest  # assembled from these very latents and M
    first = lat["offsets"][:-1]
    ms = [load_trained_mdnrnn(run_dir, member=k) for k in range(member_count(run_dir))]
    wm = WorldModel(
        game,
        _encoding_vae(run_dir, game, lat),
        ms[0],
        torch.from_numpy(lat["mu"][first]),
        torch.from_numpy(lat["logvar"][first]),
        ensemble=ms[1:],
    )
    wm.starts = RealStarts.from_latents(
        wm.members, wm.game.executed_action, lat, STARTS_EVERY
    ).subset(STARTS_SIZE, seed=0)
    (dest / provenance.INPUTS_FILE).unlink(missing_ok=True)  # no record for a half-written one
    wm.save(dest)
    provenance.record(dest, inputs)
    return dest


def _last(path: Path) -> dict:
    rows = read_jsonl(path)
    return rows[-1] if rows else {}


def _span_seconds(path: Path) -> float | None:
    """Wall time between the first and last row of a metrics file (a lower bound)."""
    rows = read_jsonl(path)
    return round(rows[-1]["time"] - rows[0]["time"], 1) if len(rows) > 1 else None


def run_summary(run_dir: Path, controller: Path | None = None) -> dict:
    """Data size, final losses, stage wall times and scores of a run, for the model card."""
    rows = [r for r in data.read_manifest(run_dir) if not r.get("dropped")]
    summary = {
        "episodes": len(rows),
        "frames": sum(r["frames"] for r in rows),
        "disk_bytes": sum(r.get("bytes", 0) for r in rows),
        "collect_return_mean": (sum(r["return"] for r in rows) / len(rows)) if rows else None,
        "vae_last": _last(run_dir / VAE_DIR / METRICS_FILE),
        "vae_seconds": _span_seconds(run_dir / VAE_DIR / METRICS_FILE),
        "mdnrnn_last": _last(run_dir / MDN_DIR / METRICS_FILE),
        "mdnrnn_seconds": _span_seconds(run_dir / MDN_DIR / METRICS_FILE),
    }
    if controller is not None:
        summary["evolve_last"] = _last(controller / METRICS_FILE)
        summary["evolve_seconds"] = _span_seconds(controller / METRICS_FILE)
        summary["evaluations"] = {
            p.name: {k: v for k, v in json.loads(p.read_text()).items() if k != "returns"}
            for p in sorted(controller.glob("evaluate_*.json"))
        }
    return summary


def _check_controller(controller: Path, wm: WorldModel) -> None:
    """The controller must read this world model's observations ([z, h] or [z, c, h])."""
    try:
        ctrl, _ = read_controller(controller, game=wm.game.name)
    except ControllerError as e:
        raise ControllerError(f"--controller: {e}") from None
    check_reads(ctrl, wm, "--controller", controller)


def export(run_dir, dest, controller: str | None = None) -> Path:
    """Copy the world model (and a controller folder, if given) into ``dest``.

    Everything is checked first, then ``dest`` is written as a whole: a new folder
    beside it, renamed into place (a MODEL_CARD.md already there is kept).
    """
    run_dir, game = open_run(run_dir)
    src = run_dir / WORLD_MODEL_DIR
    if not (src / "weights.safetensors").exists():
        if not (run_dir / LATENTS).exists():
            raise ValueError(f"{run_dir}: no trained world model yet; run fit-mdnrnn first")
        assemble(run_dir)
    provenance.check_world_model(run_dir)
    wm = WorldModel.load(src, game=game)  # refuses NaN weights, names the file
    if controller is not None:
        _check_controller(Path(controller), wm)
    dest = Path(dest)
    if dest.resolve() == src.resolve():
        raise ValueError(f"dest: {dest} is the run's own world model; choose another folder")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name in ("config.json", "weights.safetensors"):
            shutil.copy2(src / name, tmp / name)
        if controller is not None:
            for name in ("controller.json", "controller.safetensors"):
                shutil.copy2(Path(controller) / name, tmp / name)
        if (dest / "MODEL_CARD.md").exists():
            shutil.copy2(dest / "MODEL_CARD.md", tmp / "MODEL_CARD.md")
        else:
            _write_card(tmp / "MODEL_CARD.md", run_dir, game, controller)
        _replace_dir(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(
            f"{dest}: could not be written ({e.strerror or e}); nothing changed"
        ) from e
    return dest


def _write_card(card: Path, run_dir: Path, game: str, controller: str | None) -> None:
    """A skeleton: the commands and the machine are the author's to add."""
    summary = run_summary(run_dir, Path(controller) if controller else None)
    card.write_text(
        f"# {game}\n\n"
        f"Exported from run directory `{run_dir}` by dreamgym {__version__}.\n\n"
        "## Data, losses, wall time per stage and scores (read from the run)\n\n"
        f"```json\n{json.dumps(summary, indent=2)}\n```\n\n"
        "## Commands and machine\n\n"
        "The exact commands that made this run, and the machine they ran on.\n"
    )


def _replace_dir(new: Path, dest: Path) -> None:
    """Put the folder ``new`` in the place of ``dest`` (two renames; files beside the
    exported ones in an existing ``dest`` are copied over first)."""
    if dest.exists():
        for p in dest.iterdir():
            if (new / p.name).exists():
                continue
            if p.is_dir():
                shutil.copytree(p, new / p.name, symlinks=True)
            else:
                shutil.copy2(p, new / p.name, follow_symlinks=False)
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old)
    else:
        os.replace(new, dest)
