"""Where the shipped world models live, and how an env finds the one it dreams in.

The top-level ``models/`` folder installs as the package ``dreamgym.models``:
one sub-folder per game with what ``gym.make`` and ``load_controller`` read
(``config.json``, ``weights.safetensors``, ``controller.json``,
``controller.safetensors``). An editable install reads the repository's ``models/``,
where each folder also holds its ``MODEL_CARD.md``, metrics and score reports.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from dreamgym.games import GameSpec, get_game, models_root
from dreamgym.world_model import CONFIG_FILE, WorldModel, WorldModelError


def _models_root() -> Path:
    return models_root()


def shipped_dir(game: str | GameSpec) -> Path:
    """The folder the shipped weights of ``game`` install to (it may not exist yet)."""
    return _models_root() / get_game(game).name


def training_instructions(game: str | GameSpec) -> str:
    """How to train and export a world model of ``game`` with the CLI."""
    spec = get_game(game)
    name, run = spec.name, spec.run_dir or f"runs/{spec.name}"
    return (
        f"    dreamgym pipeline {spec.source or name} --preset cpu --run {run}\n"
        f"    dreamgym export {run} models/{name}\n"
    )


def same_device(a: str | torch.device, b: str | torch.device) -> bool:
    """Whether two device names mean one device (``cuda`` is the current CUDA device,
    ``cpu:0`` the CPU)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if a.index is None or b.index is None else None
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def load_world_model(
    game: str | GameSpec,
    world_model: str | os.PathLike | WorldModel | None = None,
    device: str | torch.device | None = None,
) -> WorldModel:
    """The world model an env of ``game`` dreams in.

    ``world_model`` is a folder (``WorldModel.save`` / ``dreamgym export``), a
    ``WorldModel``, or None for the shipped weights. ``device`` None keeps a given
    ``WorldModel`` where it is (a folder loads on the CPU); another device moves a
    copy, never the caller's object.
    """
    spec = get_game(game)
    if isinstance(world_model, WorldModel):
        if world_model.game.name != spec.name:
            raise ValueError(
                f"world_model: a {world_model.game.name!r} world model cannot dream "
                f"{spec.dream_id}; expected one of {spec.name!r}"
            )
        wm = world_model
        if device is not None and not same_device(device, wm.device):
            wm = copy.deepcopy(wm).to(device)
        return wm
    if world_model is None:
        folder = shipped_dir(spec)
        if not (folder / CONFIG_FILE).is_file():
            raise WorldModelError(
                f"{spec.dream_id} needs a trained world model and none ships in {folder} yet.\n"
                f"Train one and export it:\n{training_instructions(spec)}"
                f"then pass world_model='models/{spec.name}' (or export into {folder} to make it "
                "the default), or pass world_model=FOLDER for any folder holding "
                f"{CONFIG_FILE} and weights.safetensors."
            )
        return WorldModel.load(folder, game=spec.name, device=device or "cpu")
    if isinstance(world_model, (str, os.PathLike)):
        return WorldModel.load(world_model, game=spec.name, device=device or "cpu")
    raise TypeError(
        "world_model: expected a folder path, a dreamgym.WorldModel or None (the shipped "
        f"weights), got {type(world_model).__name__}"
    )


__all__ = ["models_root", "shipped_dir", "load_world_model", "training_instructions", "same_device"]
