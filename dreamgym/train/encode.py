"""Stage 3: every frame to V's posterior (mu, logvar); the bank of first-frame encodings.

Writes ``latents.npz`` (episodes concatenated, with offsets) atomically. The file
records which V made it (the run's checkpoint step, or a world-model folder's V) and
which episode shards it holds: a rerun with another V re-encodes everything, a rerun
after more collection encodes only the new episodes, and an up-to-date file is kept.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dreamgym import data
from dreamgym._io import atomic_path
from dreamgym.train import provenance
from dreamgym.train.common import LATENTS, RunDirError, check_options, open_run, set_threads
from dreamgym.train.fit_vae import load_trained_vae
from dreamgym.vae import frames_to_tensor
from dreamgym.world_model import WorldModel


@dataclass
class EncodeConfig:
    """Settings of the ``encode`` stage: every frame of the run to V's (mu, logvar)."""

    batch_size: int = 500
    """Frames V encodes at once."""
    device: str = "cpu"
    """Torch device (``cpu``, ``cuda``, ``cuda:1``)."""
    threads: int | None = None
    """Torch threads of this process (None: torch's default)."""
    world_model: str | None = None
    """Encode with the V of this world-model folder (``models/car_racing``, an export)
    instead of the run's fit-vae checkpoint: the latents that world model's M reads,
    for ``evolve --real-starts`` in a run whose ``world_model/`` is that folder."""


def _load_vae(run_dir: Path, config: EncodeConfig, game: str):
    if config.world_model is None:
        return load_trained_vae(run_dir, config.device)
    return WorldModel.load(config.world_model, game=game, device=config.device).vae


def load_latents(run_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of the run's ``latents.npz``."""
    path = Path(run_dir) / LATENTS
    if not path.exists():
        raise RunDirError(f"{path}: not found; run encode first")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise RunDirError(f"{path}: unreadable ({e}); delete it and rerun encode") from None


def _encoded(path: Path, step: int, source: str, vae_id: str, rows: list[dict]) -> int:
    """How many of the episodes ``rows`` ``path`` already holds, in order, from this V."""
    if not path.exists():
        return 0
    try:
        old_id, old_rows = provenance.latents_inputs(path)
        if old_id is not None:
            same = old_id == vae_id and provenance.covers(
                provenance.shards_identity(old_rows), rows
            )
            return len(old_rows) if same else 0
        with np.load(path, allow_pickle=False) as z:  # written before records were
            if "files" not in z.files or int(z["vae_step"]) != step:
                return 0
            old_source = str(z["vae_source"]) if "vae_source" in z.files else ""
            if old_source != source:
                return 0
            old = [str(f) for f in z["files"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return 0  # unreadable: encode it again
    names = [r["file"] for r in rows]
    return len(old) if old == names[: len(old)] else 0


@torch.no_grad()
def run(config: EncodeConfig, run_dir) -> Path:
    """Encode the run's episodes (only the new ones on a rerun); return the ``latents.npz`` path."""
    check_options(config, positive=("batch_size", "threads"))
    run_dir, game = open_run(run_dir)
    set_threads(config.threads)
    path = run_dir / LATENTS
    step, source, vae_id = provenance.vae_source(run_dir, config.world_model)
    rows = data.kept_rows(run_dir)
    paths = [run_dir / data.EPISODES_DIR / r["file"] for r in rows]
    names = [p.name for p in paths]
    if not rows:
        raise RunDirError(f"{run_dir}: no episodes collected yet; run `dreamgym collect` first")
    done = _encoded(path, step, source, vae_id, rows)
    if done == len(paths) and path.exists():
        return path
    vae = _load_vae(run_dir, config, game)
    mus, logvars, actions, rewards, terms, lengths = [], [], [], [], [], []
    if done:
        old = load_latents(run_dir)
        mus, logvars = [old["mu"]], [old["logvar"]]
        actions, rewards, terms = [old["actions"]], [old["rewards"]], [old["terminated"]]
        lengths = list(np.diff(old["offsets"]))
    for p, row in tqdm(
        list(zip(paths, rows, strict=True))[done:], desc=f"encode {game}", unit="ep"
    ):
        ep = data.read_episode(p, sha=row["sha256"])
        for i in range(0, len(ep["frames"]), config.batch_size):
            mu, logvar = vae.encode(
                frames_to_tensor(ep["frames"][i : i + config.batch_size], config.device)
            )
            mus.append(mu.cpu().numpy())
            logvars.append(logvar.cpu().numpy())
        actions.append(ep["actions"])
        rewards.append(ep["rewards"])
        terms.append(ep["terminated"])
        lengths.append(len(ep["frames"]))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: no .npz suffix added
        np.savez(
            f,
            mu=np.concatenate(mus).astype(np.float32),
            logvar=np.concatenate(logvars).astype(np.float32),
            actions=np.concatenate(actions).astype(np.float32),
            rewards=np.concatenate(rewards).astype(np.float32),
            terminated=np.concatenate(terms),
            offsets=offsets,
            files=np.array(names),
            shards=np.array([r["sha256"] for r in rows]),
            vae_id=np.array(vae_id),
            vae_step=np.int64(step),
            vae_source=np.array(source),
            vae_folder=np.array(str(Path(config.world_model).resolve()) if source else ""),
        )
    return path
