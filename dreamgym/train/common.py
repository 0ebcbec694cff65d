"""What every stage shares: the run directory, its config files and metrics log."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from dreamgym._io import atomic_path
from dreamgym._version import __version__
from dreamgym.games import get_game
from dreamgym.world_model import WorldModel, WorldModelError, atomic_write_text

RUN_FILE = "run.json"
WORLD_MODEL_DIR = "world_model"
"""Where a run directory keeps its assembled world model (what evolve and the dream read)."""


class RunDirError(ValueError):
    """A run directory that belongs to another game or is not a run directory."""


def world_model_dest(run_dir: Path) -> Path:
    """``run_dir/world_model``, where assembling writes; refuses a link to another folder."""
    dest = Path(run_dir) / WORLD_MODEL_DIR
    if dest.is_symlink():
        raise RunDirError(
            f"{dest} links to {dest.resolve()}; assembling would overwrite that folder. "
            "Remove the link first"
        )
    return dest


def open_run(run_dir: str | os.PathLike, game: str | None = None) -> tuple[Path, str]:
    """Create or open a run directory; return (path, game name).

    A new directory needs ``game``; an existing one must match it.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / RUN_FILE
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if game is not None and meta["game"] != get_game(game).name:
            raise RunDirError(
                f"{run_dir}: this run directory is for {meta['game']!r}, not {game!r}; "
                "pass another --run directory"
            )
        return run_dir, meta["game"]
    if game is None:
        raise RunDirError(f"{run_dir}: not a dreamgym run directory (no {RUN_FILE}); run collect")
    name = get_game(game).name
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"game": name, "dreamgym_version": __version__, "created": time.time()}
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return run_dir, name


def run_world_model(run_dir: str | os.PathLike) -> Path:
    """The folder of a run's trained world model (what the controller stages train in)."""
    run_dir, game = open_run(run_dir)
    wm_dir = run_dir / WORLD_MODEL_DIR
    try:
        WorldModel.load(wm_dir, game=game)
    except WorldModelError as e:
        raise WorldModelError(f"{e}; run fit-mdnrnn first (it writes {wm_dir})") from None
    return wm_dir


def save_config(path: Path, config) -> None:
    """Write a stage's config dataclass as JSON, atomically."""
    atomic_write_text(path, json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def log_metrics(path: Path, **row) -> None:
    """Append one JSON line to a metrics file."""
    row = {"time": round(time.time(), 3), **row}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def atomic_torch_save(obj: dict, path: Path) -> None:
    """Save a checkpoint of tensors and plain values (loaded back with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by ``atomic_torch_save``; a corrupt file raises ``RunDirError``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise RunDirError(
            f"{path}: corrupt checkpoint ({type(e).__name__}: {e}); delete it to restart this stage"
        ) from None


def set_threads(threads: int | None) -> None:
    """Set torch's thread count (None or 0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)
