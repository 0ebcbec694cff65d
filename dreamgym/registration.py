"""Dreams of your own world models as Gymnasium ids: ``dreamgym.register(folder)``.

Importing dreamgym registers the shipped games' dreams. ``register(folder)`` does
the same for any world-model folder ``dreamgym export`` (or ``WorldModel.save``)
wrote: it rebuilds the folder's game from its ``config.json`` (``game`` and
``game_source``) and registers ``Dream<Name>-v0`` with its vector entry point, so

    dreamgym.register("models/pong")            # -> "DreamPong-v0"
    env = gym.make("DreamPong-v0")
    venv = gym.make_vec("DreamPong-v0", num_envs=64)
    real = dreamgym.make_real("DreamPong-v0")
    policy = dreamgym.load_controller("DreamPong-v0")   # the folder's controller

The folder's ``config.json`` may name its dream (``"dream_id": "DreamPong-v0"``);
the environment variable ``DREAMGYM_MODELS`` (folders separated by ``os.pathsep``)
registers folders when dreamgym is imported.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import gymnasium as gym

from dreamgym.envs import game_from_config
from dreamgym.games import ENV_IDS, register_dream_id
from dreamgym.shipped import models_root, shipped_dir
from dreamgym.world_model import CONFIG_FILE, WorldModelError, read_json

MODELS_VARIABLE = "DREAMGYM_MODELS"
"""Environment variable: world-model folders to register when dreamgym is imported."""


def register(
    folder: str | os.PathLike, dream_id: str | None = None, tau: float | None = None
) -> str:
    """Register the dream of the world-model folder ``folder``; returns its Gymnasium id.

    ``folder`` may also name a folder of ``models/`` that ships with dreamgym (a game
    whose package is an optional extra, so its dream is registered on request).

    ``dream_id``: the id (default: the folder config's ``dream_id``, else the game's,
    ``Dream<Name>-v0``); ``tau``: the temperature ``gym.make`` defaults to (default:
    the game's). Registering the same folder under the same id again is a no-op; an
    id already registered otherwise is an error, and nothing is registered.
    """
    path = Path(folder).resolve()
    if not path.is_dir() and (models_root() / str(folder)).is_dir():
        path = models_root() / str(folder)  # a world model that ships with dreamgym, by name
    if not path.is_dir():
        raise WorldModelError(f"{folder}: world-model folder not found")
    cfg = read_json(path / CONFIG_FILE)
    if "game" not in cfg:
        raise WorldModelError(f"{path / CONFIG_FILE}: missing key 'game'")
    spec = game_from_config(cfg, str(path / CONFIG_FILE))
    env_id = dream_id or cfg.get("dream_id") or spec.dream_id
    if not isinstance(env_id, str) or not env_id.endswith(tuple(f"-v{i}" for i in range(10))):
        raise ValueError(f"dream_id: expected an id like 'DreamPong-v0', got {env_id!r}")
    kwargs = {"world_model": str(path), "tau": spec.default_tau if tau is None else tau}
    if env_id in gym.registry:
        known = gym.spec(env_id).kwargs
        if known == {"game": spec.name, **kwargs}:
            return env_id
        # a user's game is registered without a folder until one is given; a dream of
        # another folder, or of the weights that ship with dreamgym, stays
        ships = shipped_dir(spec)
        other = (ships / CONFIG_FILE).is_file() and ships.resolve() != path
        if other or "world_model" in known or ENV_IDS.get(env_id) != spec.name:
            raise ValueError(
                f"dream_id: {env_id!r} is already registered (world model "
                f"{known.get('world_model', 'shipped')}); pass another dream_id"
            )
    if ENV_IDS.get(env_id, spec.name) != spec.name:
        raise ValueError(f"dream_id: {env_id!r} belongs to game {ENV_IDS[env_id]!r}")
    register_dream_id(env_id, spec, **kwargs)
    ENV_IDS[env_id] = spec.name
    return env_id


def register_from_environment() -> list[str]:
    """Register every folder ``DREAMGYM_MODELS`` lists; a folder that fails is skipped
    with a warning that says why (importing dreamgym never fails on it)."""
    ids = []
    for folder in filter(None, os.environ.get(MODELS_VARIABLE, "").split(os.pathsep)):
        try:
            ids.append(register(folder))
        except (ValueError, OSError) as e:
            warnings.warn(f"{MODELS_VARIABLE}: {folder} not registered ({e})", stacklevel=2)
    return ids


__all__ = ["register", "register_from_environment", "MODELS_VARIABLE"]
