"""What every stage shares: the run directory, its config files, metrics log and checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from dreamgym._io import atomic_path
from dreamgym._version import __version__
from dreamgym.envs import game_from_config, game_record, resolve_game
from dreamgym.games import GameSpec
from dreamgym.world_model import atomic_write_text, read_json

# ---------------------------------------------------------------- a run's layout

RUN_FILE = "run.json"
WORLD_MODEL_DIR = "world_model"
"""Where a run directory keeps its assembled world model (what evolve and the dream read)."""
VAE_DIR = "vae"
"""Where fit-vae trains V in a run directory."""
MDN_DIR = "mdnrnn"
"""Where fit-mdnrnn trains M (member 0 of an ensemble) in a run directory."""
LATENTS = "latents.npz"
"""The file encode writes in a run directory: every frame as V's (mu, logvar)."""


def member_dir(run_dir: Path, k: int) -> Path:
    """Where member k of the run's ensemble of Ms trains (member 0: ``mdnrnn/`` itself)."""
    out = Path(run_dir) / MDN_DIR
    return out if k == 0 else out / f"member{k}"


def member_count(run_dir: Path) -> int:
    """How many Ms the run's fit-mdnrnn trains (its config's ``members``; 1 before ensembles)."""
    cfg_path = Path(run_dir) / MDN_DIR / "config.json"
    return int(read_json(cfg_path).get("members", 1)) if cfg_path.exists() else 1


def stage_folders(run_dir, stage: str) -> list[Path]:
    """The folders of ``stage`` in a run directory: ``<stage>-<id>`` and older
    ``<stage>_<settings>`` ones."""
    run_dir = Path(run_dir)
    return sorted({*run_dir.glob(f"{stage}-*/"), *run_dir.glob(f"{stage}_*/")})


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


def open_run(run_dir: str | os.PathLike, game: str | GameSpec | None = None) -> tuple[Path, str]:
    """Create or open a run directory; return (path, game name).

    A new directory needs ``game`` (a name, a Gymnasium id, ``module:object`` or a
    ``GameSpec``; ``run.json`` records its source, so a user's game is found again in
    a fresh process); an existing one must match it.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / RUN_FILE
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            meta["game"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise RunDirError(
                f"{meta_path}: unreadable ({type(e).__name__}: {e}); restore it: it holds "
                '{"game": "<game name>"}'
            ) from None
        if game is not None and meta["game"] != resolve_game(game).name:
            raise RunDirError(
                f"{run_dir}: this run directory is for {meta['game']!r}, not {game!r}; "
                "pass another --run directory"
            )
        game_from_config(meta, str(meta_path))  # a user's game: registered in this process
        return run_dir, meta["game"]
    if game is None:
        raise RunDirError(f"{run_dir}: not a dreamgym run directory (no {RUN_FILE}); run collect")
    spec = resolve_game(game)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {**game_record(spec), "dreamgym_version": __version__, "created": time.time()}
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return run_dir, spec.name


def save_config(path: Path, config) -> None:
    """Write a stage's config dataclass as JSON, atomically."""
    atomic_write_text(path, json.dumps(dataclasses.asdict(config), indent=2) + "\n")


class NonFiniteError(RunDirError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def check_finite(loss, stage: str, step: int, ckpt_path: Path) -> None:
    """Stop a stage at its first non-finite loss, before the step that would spread it."""
    value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        kept = (
            f"{ckpt_path} (the last good checkpoint) is kept"
            if ckpt_path.exists()
            else "no checkpoint was written"
        )
        raise NonFiniteError(
            f"{stage}: the loss is {value} at step {step + 1}; {kept}. Rerun with a lower "
            "--lr: it resumes from there"
        )


def check_weights(module: torch.nn.Module, stage: str, step: int, ckpt_path: Path) -> None:
    """Refuse to checkpoint weights that are no longer finite (the last good one is kept)."""
    bad = [k for k, v in module.state_dict().items() if not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(
            f"{stage}: weight {bad[0]!r} is NaN or infinite at step {step}; {ckpt_path} (the "
            "last good checkpoint) is kept. Rerun with a lower --lr: it resumes from there"
        )


def check_options(config, positive=(), at_least_zero=(), finite=()) -> None:
    """Options of a stage's config: integers or numbers in range, a usable device."""
    for name in positive:
        value = getattr(config, name)
        if value is not None and not (isinstance(value, int | float) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')}: expected a number > 0, got {value}")
    for name in at_least_zero:
        value = getattr(config, name)
        if value is not None and not (isinstance(value, int | float) and value >= 0):
            raise ValueError(f"--{name.replace('_', '-')}: expected a number >= 0, got {value}")
    for name in (*positive, *at_least_zero, *finite):
        value = getattr(config, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')}: expected a finite number, got {value}")
    if hasattr(config, "device"):
        check_device(config.device)


def check_device(device: str) -> None:
    """A torch device this machine has (``cpu``, ``cuda``, ``cuda:1``)."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"--device: {device!r} is not a torch device ({e})") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r}, but CUDA is not available here; use cpu")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"--device: {device!r}, but this machine has "
                         f"{torch.cuda.device_count()} CUDA devices")  # fmt: skip
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda[:N], got {device!r}")


def check_resume(folder: Path, started: dict, now: dict) -> None:
    """Refuse to resume a stage whose settings that shape its checkpoint changed."""
    for key, value in now.items():
        if key in started and started[key] != value:
            raise RunDirError(
                f"{folder}: started with {key}={started[key]!r}, now {key}={value!r}; use the "
                f"same value to resume, or delete {folder} to start over"
            )


def set_threads(threads: int | None) -> None:
    """Set torch's thread count (None or 0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- checkpoints

CHECKPOINT = "checkpoint.safetensors"
"""The file of a training stage's checkpoint (V's and each M's), in the stage's folder."""
LEGACY_CHECKPOINT = "checkpoint.pt"
"""What older dreamgym versions wrote instead (a torch pickle); ``checkpoint_path`` refuses it."""
OPTIM = "optim"
"""The prefix of an optimizer's per-parameter tensors in a checkpoint."""


def save_checkpoint(path: Path, tensors: dict, values: dict) -> None:
    """Tensors (numpy or torch) as safetensors, plain values as JSON in its metadata:
    one file, written atomically."""
    arrays = {
        k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, order="C")
        for k, v in tensors.items()
    }
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), {"state": json.dumps(values)})


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and JSON values of a checkpoint; a corrupt file raises ``RunDirError``."""
    try:
        with safe_open(str(path), framework="np") as f:
            values = json.loads(f.metadata()["state"])
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise RunDirError(
            f"{path}: corrupt checkpoint ({type(e).__name__}: {e}); delete it to restart this stage"
        ) from None
    return arrays, values


def checkpoint_path(folder: Path, stage: str) -> Path:
    """``folder/checkpoint.safetensors``; refuses a folder that holds only the
    ``checkpoint.pt`` of an older dreamgym."""
    path, legacy = Path(folder) / CHECKPOINT, Path(folder) / LEGACY_CHECKPOINT
    if legacy.exists() and not path.exists():
        raise RunDirError(
            f"{legacy}: written by an older dreamgym, which this one does not read; delete "
            f"it to run {stage} again"
        )
    return path


def module_tensors(prefix: str, state_dict: dict) -> dict[str, torch.Tensor]:
    """A module's ``state_dict`` as named tensors: ``<prefix>.<key>``."""
    return {f"{prefix}.{k}": v for k, v in state_dict.items()}


def module_state(prefix: str, tensors: dict) -> dict[str, torch.Tensor]:
    """The ``state_dict`` that ``module_tensors`` stored under ``prefix``."""
    n = len(prefix) + 1
    return {k[n:]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's ``state_dict`` as named tensors (Adam: ``optim.<i>.step``,
    ``exp_avg``, ``exp_avg_sq`` of parameter i) and JSON values (``param_groups``)."""
    tensors = {
        f"{OPTIM}.{i}.{name}": torch.as_tensor(v)
        for i, state in state_dict["state"].items()
        for name, v in state.items()
    }
    return tensors, {"param_groups": state_dict["param_groups"]}


def optimizer_state(tensors: dict, values: dict) -> dict:
    """The optimizer ``state_dict`` that ``optimizer_tensors`` stored."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith(OPTIM + "."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = torch.from_numpy(v)
    return {"state": state, "param_groups": values["param_groups"]}
