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
import os
import zipfile
from pathlib import Path

import numpy as np

from dreamgym import data
from dreamgym._io import atomic_path
from dreamgym.train.common import (
    CHECKPOINT,
    LATENTS,
    LEGACY_CHECKPOINT,
    MDN_DIR,
    VAE_DIR,
    WORLD_MODEL_DIR,
    RunDirError,
    checkpoint_path,
    load_checkpoint,
    member_count,
    member_dir,
    open_run,
    stage_folders,
)
from dreamgym.world_model import WEIGHTS_FILE, WorldModel, WorldModelError, vae_digest

INPUTS_FILE = "inputs.json"


class StaleError(RunDirError):
    """A stage's output was built from inputs that have changed since."""


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes."""
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
    """Write what the stage in ``folder`` was built from (``inputs.json``, atomically)."""
    with atomic_path(Path(folder) / INPUTS_FILE) as tmp:
        tmp.write_text(json.dumps(inputs, indent=2) + "\n")


def latents_inputs(path: Path) -> tuple[str | None, list[dict]]:
    """The V a ``latents.npz`` was encoded with and its episodes' rows (file, sha256);
    (None, []) for a file written before records were."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise RunDirError(f"{path}: unreadable ({e}); delete it and rerun encode") from None
    with z:
        if "vae_id" not in z.files or "shards" not in z.files:
            return None, []
        rows = [
            {"file": str(f), "sha256": str(s)} for f, s in zip(z["files"], z["shards"], strict=True)
        ]
        return str(z["vae_id"]), rows


def vae_step(run_dir: Path) -> int:
    """The training step of the run's V checkpoint."""
    return int(load_checkpoint(checkpoint_path(run_dir / VAE_DIR, "fit-vae"))[1]["step"])


def vae_source(run_dir: Path, world_model: str | None) -> tuple[int, str, str]:
    """Which V encodes: (step, "", the checkpoint file's digest) for the run's checkpoint;
    for a world model's, (-1, the digest of its V's tensors, the same), so a new V in the
    same folder re-encodes and a new M or bank there does not."""
    if world_model is None:
        ckpt = checkpoint_path(run_dir / VAE_DIR, "fit-vae")
        if not ckpt.exists():
            raise RunDirError(
                f"{run_dir}: no V to encode with; run fit-vae, or pass --world-model DIR "
                "to encode with an exported world model's V"
            )
        return vae_step(run_dir), "", file_digest(ckpt)
    weights = Path(world_model) / WEIGHTS_FILE
    if not weights.exists():
        raise RunDirError(f"world_model: {weights} not found; pass a world-model folder")
    digest = vae_digest(weights.parent)
    return -1, digest, digest


def vae_identity(run_dir: Path, latents: Path) -> str | None:
    """The identity of the V that encoded ``latents`` as that V is now (None: it is gone)."""
    with np.load(latents, allow_pickle=False) as z:
        folder = str(z["vae_folder"]) if "vae_folder" in z.files else ""
    try:
        return vae_source(run_dir, folder or None)[2]
    except (RunDirError, ValueError):
        return None


UPSTREAM = {"vae": "fit-vae", "mdnrnn": "fit-mdnrnn", "world_model": "fit-mdnrnn",
            "ensemble": "that world model's fit-mdnrnn",
            "check_world": "that world model's fit-mdnrnn",
            "init": "the stage that wrote that controller"}  # fmt: skip
"""The stage that writes each named input."""


def stale_reason(old: dict, new: dict, rows: list[dict] | None = None) -> str | None:
    """Why the recorded inputs ``old`` no longer hold (None: they do), naming the upstream
    stage. ``new``: the current identities; ``rows``: the current episodes, which must
    still begin with the ones recorded."""
    if "episodes" in old and rows is not None and not covers(old, rows):
        return "episodes it read have changed since (collect replaced or removed them)"
    for key, value in old.items():
        if key not in ("episodes", "shards") and key in new and new[key] != value:
            stage = UPSTREAM.get(key.rstrip("0123456789"), key)
            return f"its {key} has changed since ({stage} ran again)"
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


def assembly_inputs(run_dir: Path) -> dict:
    """What ``world_model/`` is assembled from: the latents and M's checkpoint (and those
    of the other members of an ensemble)."""
    inputs = {
        "latents": file_digest(Path(run_dir) / LATENTS),
        "mdnrnn": file_digest(checkpoint_path(member_dir(run_dir, 0), "fit-mdnrnn")),
    }
    k = member_count(run_dir)
    if k > 1:
        inputs["members"] = [
            file_digest(checkpoint_path(member_dir(run_dir, i), "fit-mdnrnn")) for i in range(1, k)
        ]
    return inputs


def check_world_model(run_dir: Path) -> None:
    """Refuse a run's ``world_model/`` assembled from latents or an M that changed since."""
    folder = Path(run_dir) / WORLD_MODEL_DIR
    old = recorded(folder)
    if old is None:
        return  # assembled before records were, or copied in by hand
    try:
        now = assembly_inputs(run_dir)
    except FileNotFoundError as e:
        raise StaleError(f"{folder}: assembled from {e.filename}, which is gone; run encode "
                         "and fit-mdnrnn again") from None  # fmt: skip
    vae_id, _ = latents_inputs(Path(run_dir) / LATENTS)
    if vae_id is not None and vae_identity(run_dir, Path(run_dir) / LATENTS) != vae_id:
        raise StaleError(
            f"{folder}: assembled from latents of a V that fit-vae has changed since; run "
            "`dreamgym encode`, then `dreamgym fit-mdnrnn`"
        )
    for key, stage in (("latents", "encode"), ("mdnrnn", "fit-mdnrnn"), ("members", "fit-mdnrnn")):
        if old.get(key) != now.get(key):
            raise StaleError(
                f"{folder}: assembled before {stage} last wrote its {key}; run "
                "`dreamgym fit-mdnrnn` (it fits M on the current latents and reassembles)"
            )


def run_world_model(run_dir: str | os.PathLike) -> Path:
    """The folder of a run's trained world model (what the controller stages train in),
    refused if it was assembled from latents or an M that changed since."""
    run_dir, game = open_run(run_dir)
    wm_dir = run_dir / WORLD_MODEL_DIR
    try:
        WorldModel.load(wm_dir, game=game)
    except WorldModelError as e:
        raise WorldModelError(f"{e}; run fit-mdnrnn first (it writes {wm_dir})") from None
    check_world_model(run_dir)
    return wm_dir


def status(run_dir: Path) -> list[tuple[str, str, str]]:
    """(stage, state, note) for each stage of a run: ``current``, ``stale`` (its inputs
    changed: what to do is in the note), ``behind`` (more episodes than it has read) or
    ``missing``."""
    run_dir = Path(run_dir)
    rows = data.kept_rows(run_dir)
    bad = data.verify(run_dir)
    out = [
        ("collect", "stale", f"{bad[0]}; rerun collect")
        if bad
        else ("collect", "current" if rows else "missing", f"{len(rows)} episodes")
    ]
    vae = run_dir / VAE_DIR
    out.append(_data_status("fit-vae", vae, vae / CHECKPOINT, {}, rows))
    lat, vae_id, lat_rows = run_dir / LATENTS, None, []
    if not lat.exists():
        out.append(("encode", "missing", ""))
    else:
        try:
            vae_id, lat_rows = latents_inputs(lat)
            now = vae_identity(run_dir, lat)
        except RunDirError as e:
            vae_id, now = "unreadable", str(e).split(": ", 1)[-1]
        if vae_id == "unreadable":
            out.append(("encode", "stale", now))
            vae_id = None
        elif vae_id is None:
            out.append(("encode", "current", "written before records were"))
        elif now != vae_id:
            out.append(("encode", "stale", "V changed since; rerun encode"))
        else:
            out.append(_data_status("encode", None, lat, {}, rows, lat_rows))
    mdn = run_dir / MDN_DIR
    new = {} if vae_id is None else {"vae": vae_identity(run_dir, lat)}
    out.append(_data_status("fit-mdnrnn", mdn, mdn / CHECKPOINT, new, lat_rows or None))
    wm = run_dir / WORLD_MODEL_DIR
    try:
        check_world_model(run_dir)
        wm_state = ("current", "") if (wm / "weights.safetensors").exists() else ("missing", "")
    except RunDirError as e:  # stale, or M's checkpoint is an older dreamgym's
        wm_state = ("stale", str(e).split("; ", 1)[-1])
    out.append(("world_model", *wm_state))
    out = _propagate(out)
    upstream = next((stage for stage, state, _ in out if state == "stale"), None)
    for folder in sorted([*stage_folders(run_dir, "evolve"), *stage_folders(run_dir, "ppo")]):
        old = recorded(folder)
        if old is None or not (wm / "weights.safetensors").exists():
            row = ("current", "no record: built before records were")
        else:
            digest = file_digest(wm / "weights.safetensors")
            why = None if old.get("world_model") == digest else "trained in another world model"
            why = why or _init_changed(folder, old)
            row = ("stale", f"{why}; delete {folder} to train again") if why else ("current", "")
        if upstream is not None and row[0] == "current":  # not from a sibling folder
            row = ("stale", f"built from {upstream}, which is stale")
        out.append((folder.name, *row))
    return out


def _init_changed(folder: Path, old: dict) -> str | None:
    """Why the controller an evolve or ppo folder started from (its config's ``init``) is
    no longer the one it recorded (None: it is, or there is nothing to check)."""
    from dreamgym.policy import WEIGHTS_FILE as CONTROLLER_WEIGHTS

    if "init" not in old:
        return None
    config = next((folder / n for n in ("evolve.json", "ppo.json") if (folder / n).exists()), None)
    init = json.loads(config.read_text()).get("init") if config else None
    weights = Path(init) / CONTROLLER_WEIGHTS if init else None
    if weights is None or not weights.exists():
        return None  # recorded from another directory, or moved: nothing here to compare
    return None if file_digest(weights) == old["init"] else f"its init {init} has changed since"


def _propagate(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """A stage after a stale one is stale too: it was built from what that one made."""
    out, upstream = [], None
    for stage, state, note in rows:
        if upstream is not None and state in ("current", "behind"):
            state, note = "stale", f"built from {upstream}, which is stale"
        if state == "stale" and upstream is None:
            upstream = stage
        out.append((stage, state, note))
    return out


def _data_status(stage, folder, artifact, new, rows, read_rows=None):
    """A stage that read episodes: stale if they changed, behind if more came since."""
    if not artifact.exists():
        if folder is not None and (folder / LEGACY_CHECKPOINT).exists():
            why = f"{LEGACY_CHECKPOINT} of an older dreamgym, which this one does not read"
            return (stage, "stale", f"{why}; delete {folder / LEGACY_CHECKPOINT} and rerun {stage}")
        return (stage, "missing", "")
    old = {**shards_identity(read_rows)} if read_rows is not None else recorded(folder)
    if old is None:
        return (stage, "current", "no record: built before records were")
    why = stale_reason(old, new, rows)
    if why is not None:
        where = folder or artifact
        return (stage, "stale", f"{why}; delete {where} and rerun {stage}")
    if rows is not None and len(rows) > old.get("episodes", len(rows)):
        return (stage, "behind", f"{len(rows) - old['episodes']} episodes more than it read")
    return (stage, "current", f"{old.get('episodes', '?')} episodes")


def format_status(rows: list[tuple[str, str, str]]) -> str:
    """The rows of ``status`` as an aligned table, one stage a line."""
    width = max(len(stage) for stage, _, _ in rows)
    return "\n".join(
        f"{stage:<{width}}  {state:<8}  {note}".rstrip() for stage, state, note in rows
    )
