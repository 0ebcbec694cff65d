"""The ``distill`` stage: carry a trained controller over to the run's world model.

C reads the state h of the M it was trained with; another M (one fitted from scratch
on other data, a larger one) keeps its h in other units, so C's weights on h mean
nothing there. ``distill`` fits a C that reads the run's M to act as the teacher
acts: both Ms read the run's recorded episodes (``latents.npz``, frames through the
V the two world models share), the teacher C acts on its own M's state at every
frame, and a linear C on the run's M's state is fitted by least squares to the
teacher's outputs before tanh (a ridge penalty on the weights, none on the bias).
Episodes held out of the fit measure it (R^2 per output). No dream and no real game
is played; ``evaluate`` scores the folder it writes and ``ppo --init`` refines it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dreamgym import dream_core as dc
from dreamgym.controller import Controller
from dreamgym.policy import (
    WEIGHTS_FILE,
    check_reads,
    controller_config,
    read_controller,
    save_controller,
)
from dreamgym.starts import RealStarts
from dreamgym.train import provenance
from dreamgym.train.common import set_threads
from dreamgym.train.encode import load_latents
from dreamgym.train.evaluate import resolve_source
from dreamgym.train.evolve import load_worlds
from dreamgym.world_model import WEIGHTS_FILE as WM_WEIGHTS
from dreamgym.world_model import WorldModel

OUT_DIR = "distill"
CHUNK_EPISODES = 256  # episodes whose states are held at once (M reads as many in a batch)


@dataclass
class DistillConfig:
    """Settings of the ``distill`` stage: a teacher C carried to the run's M."""

    teacher: str | None = None
    """The controller to carry over: a model folder, a run or evolve directory, or a
    game's name (its shipped model); its world model must have the run's V."""
    teacher_controller: str | None = None
    """The teacher's controller folder, when its source holds several."""
    every: int = 1
    """Fit on every ``every``-th frame of each episode."""
    ridge: float = 1e-3
    """Penalty on the squared weights, per frame fitted (inputs are of order 1)."""
    held_out: float = 0.1
    """Share of the episodes left out of the fit, to measure it."""
    seed: int = 0
    """Seed of the choice of held-out episodes."""
    device: str = "cpu"
    """Torch device of the two Ms."""
    threads: int | None = None
    """Torch threads of this process (None: torch's default)."""
    out: str | None = None
    """The folder to write (None: ``distill/`` in the run directory)."""


def _check(config: DistillConfig) -> None:
    if not config.teacher:
        raise ValueError("teacher: name the controller to carry over (a model folder, a run "
                         "or evolve directory, or a game's name)")  # fmt: skip
    if config.every < 1:
        raise ValueError(f"every: expected an integer >= 1, got {config.every}")
    if not (math.isfinite(config.ridge) and config.ridge >= 0):
        raise ValueError(f"ridge: expected a number >= 0, got {config.ridge}")
    if not 0 < config.held_out < 1:
        raise ValueError(f"held_out: expected a share in (0, 1), got {config.held_out}")


def run(config: DistillConfig, run_dir) -> Path:
    """Fit a C on the run's M that acts as ``config.teacher``; return its folder."""
    _check(config)
    set_threads(config.threads)
    wm_dir = provenance.run_world_model(run_dir)
    teacher_dir, ctrl_dir = resolve_source(config.teacher, config.teacher_controller)
    student = WorldModel.load(wm_dir, device=config.device)
    (teacher,) = load_worlds(student, [teacher_dir], config.device, "teacher")  # same V
    teacher_c, info = read_controller(ctrl_dir, student.game.name)
    check_reads(teacher_c, teacher, "teacher", ctrl_dir)
    latents = load_latents(run_dir)
    fit, test = split_episodes(latents, config.held_out, config.seed)
    chunks = chunk_count(fit) + chunk_count(test)
    bar = tqdm(total=chunks, desc="distill", unit="chunk")
    every = config.every
    fit_pairs = in_chunks(teacher, teacher_c, student, fit, every, bar)
    weight, bias, frames = least_squares(fit_pairs, config.ridge, student.game.controller_bias)
    test_pairs = in_chunks(teacher, teacher_c, student, test, every, bar)
    r2, test_frames = r_squared(test_pairs, weight, bias)
    bar.close()
    cfg = controller_config(student, outputs=teacher_c.config.out_dim)
    params = torch.cat([weight.reshape(-1)] + ([] if bias is None else [bias]))
    assert params.numel() == cfg.num_params
    out = Path(config.out) if config.out else Path(run_dir) / OUT_DIR
    digests = {
        "world_model": provenance.file_digest(wm_dir / WM_WEIGHTS),
        "teacher_world_model": provenance.file_digest(teacher_dir / WM_WEIGHTS),
        "teacher": provenance.file_digest(ctrl_dir / WEIGHTS_FILE),
    }
    meta = {
        "trained_in": "distilled", "teacher": str(ctrl_dir), "teacher_world_model":
        str(teacher_dir), "digests": digests, "tau": info.get("tau"), "inputs": "zh",
        "frames": frames, "held_out_frames": test_frames, "held_out_r2": r2,
        "ridge": config.ridge, "every": config.every,
    }  # fmt: skip
    save_controller(out, params, student.game, meta, outputs=cfg.out_dim)
    print(f"distilled {ctrl_dir} onto {wm_dir}: held-out R^2 per output "
          f"{', '.join(f'{v:.3f}' for v in r2)} ({test_frames} frames) -> {out}")  # fmt: skip
    return out


def split_episodes(latents: dict, held_out: float, seed: int) -> tuple[dict, dict]:
    """The encoded episodes in two sets: to fit, and ``held_out`` of them (at least one
    each) to measure the fit."""
    n = len(latents["offsets"]) - 1
    if n < 2:
        raise ValueError(f"latents: {n} episode; distill needs two or more (one held out)")
    order = np.random.default_rng(seed).permutation(n)
    k = min(max(1, round(held_out * n)), n - 1)
    return episodes(latents, np.sort(order[k:])), episodes(latents, np.sort(order[:k]))


def episodes(latents: dict, which: np.ndarray) -> dict:
    """The episodes ``which`` of encode's arrays, as arrays of the same layout."""
    offsets = latents["offsets"]
    rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in which])
    lengths = offsets[which + 1] - offsets[which]
    out = {k: latents[k][rows] for k in ("mu", "logvar", "actions")}
    out["offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return out


def pairs(teacher: WorldModel, teacher_c: Controller, student: WorldModel, latents, every):
    """(the student's inputs, the teacher's outputs before tanh) at the frames' states,
    each M having read the episode up to the frame."""
    ms = [teacher.mdnrnn, student.mdnrnn]
    bank = RealStarts.from_latents(ms, student.game.executed_action, latents, every)
    z = bank.mu
    teacher_x = dc.observation(teacher, dc.DreamState(z, bank.members[0])).cpu()
    with torch.no_grad():  # C on the CPU, where read_controller loads it
        y = teacher_c.preactivation(teacher_x)
    return dc.observation(student, dc.DreamState(z, bank.members[1])).cpu(), y


def chunk_count(latents: dict, chunk: int = CHUNK_EPISODES) -> int:
    """How many chunks of ``chunk`` episodes ``in_chunks`` reads ``latents`` in."""
    return -(-(len(latents["offsets"]) - 1) // chunk)


def in_chunks(teacher, teacher_c, student, latents, every, bar=None, chunk=CHUNK_EPISODES):
    """``pairs`` over ``chunk`` episodes at a time, so no run needs all its states at once."""
    n = len(latents["offsets"]) - 1
    for lo in range(0, n, chunk):
        part = episodes(latents, np.arange(lo, min(lo + chunk, n)))
        yield pairs(teacher, teacher_c, student, part, every)
        if bar is not None:
            bar.update()


def least_squares(chunks, ridge: float, bias: bool):
    """(weight (out, in), bias (out,) or None, frames) minimising the mean squared error
    on the chunks' ``y`` plus ``ridge`` times the squared weights: the normal equations,
    summed over the (x, y) chunks in float64."""
    a = b = 0  # the sums of the normal equations
    frames = 0
    for x, y in chunks:
        x64 = x.double()
        if bias:
            x64 = torch.cat([x64, torch.ones(len(x64), 1, dtype=torch.float64)], 1)
        a = a + x64.T @ x64
        b = b + x64.T @ y.double()
        frames += len(x64)
    if frames == 0:
        raise ValueError("distill: no frames to fit C on")
    penalty = torch.full((a.shape[0],), ridge * frames, dtype=torch.float64)
    if bias:
        penalty[-1] = 0.0
    w = torch.linalg.lstsq(a + torch.diag(penalty), b).solution.float().T  # (out, in [+ 1])
    if bias:
        return w[:, :-1].contiguous(), w[:, -1].contiguous(), frames
    return w.contiguous(), None, frames


def r_squared(chunks, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[list[float], int]:
    """(1 - residual variance / variance per output, frames) of the linear C on the
    (x, y) chunks (1.0 for an output that never varies and is matched)."""
    resid = total = squares = 0
    frames = 0
    for x, y in chunks:
        y64 = y.double()
        pred = (x @ weight.T + (0 if bias is None else bias)).double()
        resid = resid + ((pred - y64) ** 2).sum(0)
        total = total + y64.sum(0)
        squares = squares + (y64**2).sum(0)
        frames += len(y64)
    if frames == 0:
        raise ValueError("distill: no frames to measure R^2 on")
    var = squares / frames - (total / frames) ** 2
    r2 = [float(1 - r / frames / v) if v > 1e-12 else float(r <= 1e-12 * frames)
          for r, v in zip(resid, var, strict=True)]  # fmt: skip
    return r2, frames


__all__ = ["DistillConfig", "run"]
