"""What each stage was built from: the identity of its inputs, recorded and checked.

A stage's output folder holds ``inputs.json``: the identity of what it read, as
``{name: value}``. The data's identity is the list of shard sha256s the manifest
records (``episodes`` of them, ``shards`` their digest): more episodes collected
later extend it and keep what a stage read intact, so a stage is stale only when
a shard it read was replaced or removed, or when the V or M it read changed. V
is named by the sha256 of its checkpoint file (or by ``vae_digest`` for a world
model's V), M by its checkpoint's, a world model by its weights file's.

``check`` refuses to resume a stage whose recorded inputs differ from the current
ones, naming the upstream stage; ``status`` tells, stage by stage, what is current.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dreamgym import data
from dreamgym._io import atomic_path
from dreamgym.train.common import RunDirError

INPUTS_FILE = "inputs.json"


class StaleError(RunDirError):
    """A stage's output was built from inputs that have changed since."""


def file_digest(path: Path) -> str:
    return "sha256:" + data.sha256(Path(path))


def shards_identity(rows: list[dict]) -> dict:
    """The identity of the episodes of these manifest rows: their count and digest."""
    return {"episodes": len(rows), "shards": data.shards_digest(rows)}


def covers(recorded: dict, rows: list[dict]) -> bool:
    """Whether the first episodes of ``rows`` are still exactly those ``recorded`` names."""
    n = recorded["episodes"]
    return len(rows) >= n and data.shards_digest(rows[:n]) == recorded["shards"]


def recorded(folder: Path) -> dict | None:
    """The inputs a stage recorded in ``folder`` (None: none recorded, an older run)."""
    path = Path(folder) / INPUTS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a record torn by a kill is rewritten by the next run of the stage


def record(folder: Path, inputs: dict) -> None:
    with atomic_path(Path(folder) / INPUTS_FILE) as tmp:
        tmp.write_text(json.dumps(inputs, indent=2) + "\n")


def latents_inputs(path: Path) -> tuple[str | None, list[dict]]:
    """The V a ``latents.npz`` was encoded with and its episodes' rows (file, sha256);
    (None, []) for a file written before records were."""
    with np.load(path, allow_pickle=False) as z:
        if "vae_id" not in z.files or "shards" not in z.files:
            return None, []
        rows = [
            {"file": str(f), "sha256": str(s)} for f, s in zip(z["files"], z["shards"], strict=True)
        ]
        return str(z["vae_id"]), rows


UPSTREAM = {"vae": "fit-vae", "mdnrnn": "fit-mdnrnn", "world_model": "fit-mdnrnn"}
"""The stage that writes each named input."""


def stale_reason(old: dict, new: dict, rows: list[dict] | None = None) -> str | None:
    """Why the recorded inputs ``old`` no longer hold (None: they do), naming the upstream
    stage. ``new``: the current identities; ``rows``: the current episodes, which must
    still begin with the ones recorded."""
    if "episodes" in old and rows is not None and not covers(old, rows):
        return "episodes it read have changed since (collect replaced or removed them)"
    for key, value in old.items():
        if key not in ("episodes", "shards") and key in new and new[key] != value:
            return f"its {key} has changed since ({UPSTREAM.get(key, key)} ran again)"
    return None


def check(folder: Path, stage: str, new: dict, rows: list[dict] | None = None) -> None:
    """Refuse to resume ``stage``, whose output is ``folder``, if its inputs changed."""
    old = recorded(folder)
    why = None if old is None else stale_reason(old, new, rows)
    if why is not None:
        raise StaleError(
            f"{folder}: {stage} built it from other inputs: {why}; delete {folder} to "
            f"run {stage} again on the current ones"
        )
