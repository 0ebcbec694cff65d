"""Stage presets: the shipped games' JSON files, and presets scaled to any other game.

``load_preset(game, preset)`` reads ``training/presets/<game>.json`` (installed as
``dreamgym/presets``) for the games that ship one, a JSON file given by path, or, for
a user's game, ``scaled_presets(spec)``: the same stages sized by the game's episode
limit, so that ``dreamgym pipeline ENV_ID`` runs with no file at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from dreamgym.games import GameSpec

PRESETS = ("tiny", "cpu", "paper")
"""The presets ``scaled_presets`` makes."""
CPU_FRAMES = 200_000
"""Real frames the ``cpu`` preset aims to collect (episodes = this / the episode limit)."""


def presets_dir() -> Path:
    """training/presets, installed as dreamgym/presets; the repo's folder in a checkout."""
    installed = Path(__file__).parents[1] / "presets"
    return installed if installed.is_dir() else Path(__file__).parents[2] / "training" / "presets"


def scaled_presets(spec: GameSpec) -> dict[str, dict]:
    """``tiny``, ``cpu`` and ``paper`` stage configs for ``spec``, sized by its episode limit.

    ``tiny`` runs the whole pipeline in seconds (tests); ``cpu`` collects about
    ``CPU_FRAMES`` frames with the random policy (200 to 2,400 episodes) and trains
    V, M and C on 2 CPU cores in well under an hour for short games; ``paper`` has
    the paper's CarRacing sizes.
    """
    limit = spec.max_episode_steps
    episodes = int(min(max(CPU_FRAMES // limit, 200), 2400))
    seq = min(limit, 300)
    return {
        "tiny": {
            "collect": {"episodes": 4, "workers": 2, "max_steps": min(limit, 60), "min_frames": 0},
            "fit_vae": {"epochs": 2.0, "batch_size": 8, "checkpoint_every": 5},
            "encode": {"batch_size": 64},
            "fit_mdnrnn": {"hidden": 16, "steps": 3, "batch_size": 4, "seq_len": min(limit, 40),
                           "checkpoint_every": 2},
            "evolve": {"tau": spec.default_tau, "generations": 2, "popsize": 4, "trials": 2,
                       "max_steps": min(limit, 40), "eval_every": 2, "eval_rollouts": 8},
            "evaluate": {"episodes": 2, "workers": 1, "max_steps": min(limit, 60)},
        },
        "cpu": {
            "collect": {"episodes": episodes, "workers": 2},
            "fit_vae": {"epochs": 0.5, "batch_size": 100, "lr": 0.001, "threads": 2},
            "encode": {"threads": 2},
            "fit_mdnrnn": {"steps": 3000, "batch_size": 32, "seq_len": seq, "lr": 0.001,
                           "lr_final": 0.00003, "reward_weight": 5.0, "threads": 2},
            "evolve": {"tau": spec.default_tau, "generations": 50, "popsize": 64, "trials": 16,
                       "eval_every": 10, "eval_rollouts": 512, "threads": 2},
            "evaluate": {"episodes": 100, "workers": 2},
        },
        "paper": {
            "collect": {"episodes": 10000, "workers": 64},
            "fit_vae": {"epochs": 10.0, "batch_size": 100, "lr": 0.0001},
            "encode": {},
            "fit_mdnrnn": {"steps": 20000, "batch_size": 100, "seq_len": min(limit, 1000),
                           "lr": 0.001, "lr_final": 0.00001},
            "evolve": {"tau": spec.default_tau, "generations": 1800, "popsize": 64, "trials": 16,
                       "eval_every": 25, "eval_rollouts": 1024},
            "evaluate": {"episodes": 100, "workers": 64},
        },
    }  # fmt: skip


def load_preset(spec: GameSpec, preset: str) -> dict:
    """Stage configs of ``preset``: a JSON file's path, or a name from the game's presets
    file (``training/presets/<game>.json``), else from ``scaled_presets``."""
    path = Path(preset)
    if path.suffix == ".json" and path.exists():
        presets = {"custom": json.loads(path.read_text())}
        preset = "custom"
    else:
        path = presets_dir() / f"{spec.name}.json"
        presets = json.loads(path.read_text()) if path.is_file() else scaled_presets(spec)
    if preset not in presets:
        raise ValueError(f"--preset: unknown preset {preset!r}; expected one of {sorted(presets)}")
    return presets[preset]


__all__ = ["PRESETS", "scaled_presets", "load_preset", "presets_dir"]
