"""What the controller stages share: their folders, resuming, metrics, a time budget, CMA-ES.

A run of ``evolve`` or ``ppo`` writes a folder ``<stage>-<id>`` next to the world
model, where the id hashes the settings that shape the result (``folder_name``):
the same command always finds, and resumes, the same folder, and another setting
writes another one. Its config is inside (``evolve.json``, ``ppo.json``). Folders of
older versions, named by their settings (``evolve_tau1.15``, ``ppo_tau1``), are
still found (``stage_folders``), and the command that wrote one resumes it
(``run_folder``).

``resume`` opens a folder's checkpoint (refusing one started with other settings or
from other inputs), ``begin`` records the config and inputs, ``repair_metrics``
mends the metrics log a kill left, ``Budget`` keeps a wall-time budget, and
``search`` is the ask/tell loop of CMA-ES with an injected fitness.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dreamgym._io import read_jsonl
from dreamgym.train import provenance
from dreamgym.train.common import RunDirError, load_checkpoint, save_config
from dreamgym.world_model import atomic_write_text

if TYPE_CHECKING:
    from dreamgym.cmaes import CMAES

# ---------------------------------------------------------------- run folders


def _same(value):
    """A config value as it reads back from JSON (tuples come back as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _canonical(value):
    """A config value for hashing: tuples as lists, every number as a float (1 is 1.0)."""
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def run_id(config, keys) -> str:
    """8 hex digits naming the values of ``keys`` that differ from the config class's defaults.

    Defaults are left out, so a key added later does not rename the runs before it.
    """
    default = asdict(type(config)())
    changed = {
        k: _canonical(getattr(config, k))
        for k in keys
        if _same(getattr(config, k)) != _same(default[k])
    }
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]


def folder_name(stage: str, config, keys) -> str:
    """``<stage>-<id>``: the folder a run of ``stage`` with ``config`` writes (see ``run_id``)."""
    return f"{stage}-{run_id(config, keys)}"


def run_folder(run_dir, stage: str, config, keys, config_name: str) -> Path:
    """The folder a run of ``stage`` with ``config`` writes in ``run_dir``: ``<stage>-<id>``,
    or, if that is new, an older ``<stage>_<settings>`` one whose config (``config_name``)
    has the same values of ``keys``, so a rerun of an older run's command resumes it."""
    run_dir = Path(run_dir)
    new = run_dir / folder_name(stage, config, keys)
    if new.exists():
        return new
    for folder in sorted(run_dir.glob(f"{stage}_*/")):
        try:
            saved = json.loads((folder / config_name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and _changed(saved, config, keys) is None:
            return folder
    return new


# ---------------------------------------------------------------- resuming


def resume(out, config, keys, checkpoint: str, stage: str, inputs: dict, rows=None):
    """The ``(arrays, values)`` of ``out/checkpoint`` to continue from (None: start afresh).

    Refuses a folder whose ``stage`` was built from other ``inputs`` or episodes ``rows``
    (see ``provenance.check``) or started with other values of ``keys`` (a key the
    checkpoint's config lacks had its default then).
    """
    out = Path(out)
    path = out / checkpoint
    if not path.exists():
        return None
    provenance.check(out, stage, inputs, rows)
    arrays, values = load_checkpoint(path)
    k = _changed(values["config"], config, keys)
    if k is not None:
        before = values["config"].get(k, getattr(type(config)(), k))
        raise RunDirError(
            f"{out}: started with {k}={before!r}, now {k}={getattr(config, k)!r}; use the same "
            f"value to resume, or delete {path} to start over"
        )
    return arrays, values


def _changed(saved: dict, config, keys) -> str | None:
    """The first of ``keys`` whose value in ``config`` differs from the ``saved`` config's
    (a key it lacks had its default then); None: none does."""
    default = asdict(type(config)())
    for k in keys:
        if _same(saved.get(k, default[k])) != _same(getattr(config, k)):
            return k
    return None


def begin(out, config_name: str, config, inputs: dict, finished: bool) -> None:
    """Write the config into ``out`` and record its inputs (kept as they are once finished)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(out / config_name, config)
    if not finished or provenance.recorded(out) is None:
        provenance.record(out, inputs)


def repair_metrics(path, key: str, done: int | None, last_row: dict | None = None) -> None:
    """Keep the rows a checkpoint covers: ``row[key] <= done``, each ``key`` once.

    A kill between a row and its checkpoint leaves a row too many; one between a
    checkpoint and its row loses that row, which the checkpoint keeps as ``last_row``.
    ``done=None`` (no checkpoint) keeps none.
    """
    path = Path(path)
    rows = [] if done is None else [r for r in read_jsonl(path) if r.get(key, done + 1) <= done]
    rows = list({r[key]: r for r in rows}.values())
    if last_row and done is not None and all(r[key] != last_row[key] for r in rows):
        rows.append(last_row)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if text != (path.read_text() if path.exists() else ""):
        atomic_write_text(path, text)


# ---------------------------------------------------------------- the budget


class Budget:
    """A wall-time budget of ``seconds`` from now (None: none), and the clock of one step."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.started = self.step_started = time.time()
        self.last_step = 0.0

    def over(self) -> bool:
        """Whether the budget is spent."""
        return self.seconds is not None and time.time() - self.started >= self.seconds

    def start_step(self) -> bool:
        """Start the clock of a step; whether it is the last that fits: one more, as long
        as the step before, would end past the budget."""
        self.step_started = now = time.time()
        if self.seconds is None or self.last_step <= 0:
            return False
        return now - self.started + 2 * self.last_step > self.seconds

    def step_seconds(self) -> float:
        """Seconds since the step started."""
        return time.time() - self.step_started

    def end_step(self) -> None:
        """Stop the step's clock: the next ``start_step`` reckons with its length."""
        self.last_step = self.step_seconds()

    def left(self) -> str | None:
        """The time left as ``m:ss``, for a progress bar (None: no budget)."""
        if self.seconds is None:
            return None
        left = max(self.seconds - (time.time() - self.started), 0)
        return f"{int(left // 60)}:{int(left % 60):02d}"


# ---------------------------------------------------------------- the search


Fitness = Callable[[np.ndarray, int], tuple[np.ndarray, dict]]
"""``(X, generation) -> (fitness, fields)``: the population's fitness (P,), higher is
better, and more fields for the generation's metrics row."""


def search(
    es: CMAES,
    fitness: Fitness,
    generations: int,
    on_generation: Callable[[dict, bool], None],
    budget: Budget | None = None,
) -> None:
    """Ask and tell until ``es`` has told ``generations`` generations or ``budget`` ends.

    After each tell, ``on_generation(row, last)`` gets the generation's row
    (``generation``, fitness ``best`` / ``mean`` / ``worst``, ``sigma`` and the
    fitness's fields) and whether it is the call's last generation (the count is
    reached, or the next one would not fit in the budget). It keeps the run: scores
    the mean, checkpoints, logs the row.
    """
    budget = budget or Budget(None)
    while es.generation < generations:
        last = budget.start_step() or es.generation + 1 == generations
        X = es.ask()  # (P, num_params)
        f, fields = fitness(X, es.generation + 1)
        es.tell(f)
        row = {"generation": es.generation, "best": float(np.max(f)),
               "mean": float(np.mean(f)), "worst": float(np.min(f)), "sigma": es.sigma}  # fmt: skip
        on_generation({**row, **fields}, last)
        budget.end_step()
        if last:
            break


__all__ = [
    "folder_name", "run_id", "run_folder", "resume", "begin", "repair_metrics",
    "Budget", "Fitness", "search",
]  # fmt: skip
