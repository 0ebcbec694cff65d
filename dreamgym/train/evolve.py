"""Stage 5: CMA-ES over the controller's parameters, with its fitness scored in the dream.

``run(config, run_dir)`` evolves a controller the
paper's way: population 64, 16 rollouts per member, fitness = mean return,
sigma0 0.1 from zeros; the whole population's rollouts are one batched dream
(``--real``: worker processes in the real game). Every ``eval_every``
generations the CMA mean is scored on ``eval_rollouts`` rollouts and the best
mean so far is saved as the controller. The CMA state is checkpointed every
generation (safetensors + JSON, no pickle), so a rerun resumes.

The folder ``evolve_tau<tau>/`` (``evolve_real/``) holds ``evolve.json`` (the
config), ``cma.safetensors`` (the checkpoint), ``metrics.jsonl`` (per generation:
best, mean and worst fitness, sigma, dream steps, seconds, and ``eval_mean`` /
``eval_std`` where the mean was scored) and ``controller.safetensors`` +
``controller.json`` (the CMA mean that scored best, with every score).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dreamgym import dream_core as dc
from dreamgym._io import log_metrics, read_jsonl
from dreamgym.cmaes import CMAES
from dreamgym.controller import ControllerConfig, unflatten
from dreamgym.policy import WEIGHTS_FILE, controller_config, read_controller, save_controller
from dreamgym.rollouts import DreamEvaluator, RealEvaluator
from dreamgym.spaces import check_tau
from dreamgym.starts import RealStarts
from dreamgym.train import provenance
from dreamgym.train.common import (
    RunDirError,
    load_checkpoint,
    run_world_model,
    save_checkpoint,
    save_config,
    set_threads,
)
from dreamgym.train.encode import LATENTS, load_latents
from dreamgym.world_model import WEIGHTS_FILE as WM_WEIGHTS
from dreamgym.world_model import WorldModel, atomic_write_text

CMA_FILE = "cma.safetensors"
METRICS_FILE = "metrics.jsonl"
CONFIG_NAME = "evolve.json"
RESUME_KEYS = (
    "popsize", "trials", "sigma0", "seed", "tau", "real", "max_steps", "init", "inputs", "ensemble",
    "hidden", "outputs", "real_starts", "dropout",
)  # fmt: skip
"""Config fields a resumed run must share with the run it continues."""
INPUTS = ("zh", "z")
"""What a controller may read: everything, or V's latent only."""


# ---------------------------------------------------------------- the stage


@dataclass
class EvolveConfig:
    """Settings of the ``evolve`` stage: CMA-ES for C, in the dream or the real game."""

    tau: float = 1.15
    """Dream temperature the controller trains at (ignored with ``real``)."""
    generations: int = 200
    """Total CMA-ES generations (a rerun with more continues)."""
    popsize: int = 64
    """Controllers per generation."""
    trials: int = 16
    """Rollouts per controller; fitness is their mean return."""
    sigma0: float = 0.1
    """Initial CMA-ES step size (the search starts at all-zero parameters)."""
    eval_every: int = 25
    """Score the CMA mean every this many generations (and at the last one)."""
    eval_rollouts: int = 1024
    """Rollouts of each score of the CMA mean."""
    max_steps: int | None = None
    """Episode limit (None: the game's, 2100 for Doom, 1000 for CarRacing)."""
    seed: int = 0
    """Seed of CMA-ES sampling and of every generation's rollouts."""
    real: bool = False
    """Score fitness in the real game with worker processes (the paper's CarRacing)."""
    workers: int = 2
    """Real-game worker processes (with ``real``)."""
    device: str = "cpu"
    """Torch device of the dream."""
    threads: int | None = None
    """Torch threads of this process (None: torch's default)."""
    seconds: float | None = None
    """Wall-time budget of this call: the generation the next one would not fit after
    ends the call, with the CMA mean scored and saved (a rerun continues)."""
    init: str | None = None
    """A controller folder to start from instead of all zeros (fine-tuning; with ``real``,
    a dream-trained controller). It is scored first, as generation 0, so the kept
    controller is never worse than it on the evaluation rollouts."""
    inputs: str = "zh"
    """What the controller reads: ``zh`` (the game's full input) or ``z`` (V's latent
    only, the paper's ablation without M): its weights on M's state (h, and c for
    Doom) are held at zero and CMA-ES searches the rest."""
    ensemble: tuple[str, ...] = ()
    """More world-model folders with the run's V (say, Ms fitted with other seeds): every
    controller also plays ``trials`` dreams in each, its fitness is its lowest mean over
    the models, and it reads the run's M in all of them (see ``DreamEvaluator``)."""
    hidden: int = 0
    """Units of a tanh hidden layer in the controller (0: the paper's linear C; the
    paper's ablation row "C with a 40-unit hidden layer" is 40)."""
    outputs: int = 0
    """The controller's tanh outputs (0: the paper's). CarRacing also takes 2: steer, and
    one pedal that is gas when positive and brake when negative, so the controller cannot
    press both at once."""
    dropout: float | None = None
    """Dropout rate of M's heads in every dream (None: the rate M was trained with, drawn
    anew for each dream; 0: dreams without dropout)."""
    real_starts: int = 0
    """0: dreams start at real first frames (the paper's). N > 0: they start from every
    Nth frame of the run's recorded episodes (``latents.npz``, encoded by its V), with
    the state M reaches reading the episode up to there (see ``RealStarts``); pair it
    with a short ``max_steps``, say 250."""


def input_mask(wm: WorldModel, inputs: str, cfg: ControllerConfig) -> np.ndarray:
    """Which flat parameters of a ``cfg`` controller CMA-ES searches (True) for ``inputs``."""
    mask = np.ones(cfg.num_params, dtype=bool)
    if inputs == "z":
        first = "hidden_weight" if cfg.hidden else "weight"  # the layer that reads the input
        weight = unflatten(cfg, mask)[first]  # (fan_out, in_dim), a view into mask
        weight[:, wm.mdnrnn.config.z_dim :] = False  # the [c,] h columns
    return mask


def evolve_dir_name(config: EvolveConfig) -> str:
    name = "evolve_real" if config.real else f"evolve_tau{config.tau:g}"
    name += "_z" if config.inputs == "z" else ""
    name += f"_hidden{config.hidden}" if config.hidden else ""
    name += f"_outputs{config.outputs}" if config.outputs else ""
    name += f"_starts{config.max_steps or ''}" if config.real_starts else ""
    name += f"_dropout{config.dropout:g}" if config.dropout is not None else ""
    return name + ("_ensemble" if config.ensemble else "")


def _check(config: EvolveConfig) -> None:
    for name in ("popsize", "trials", "eval_every", "eval_rollouts", "workers"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {getattr(config, name)}")
    if config.popsize < 3:
        raise ValueError(f"popsize: expected an integer >= 3, got {config.popsize}")
    if config.generations < 0:
        raise ValueError(f"generations: expected an integer >= 0, got {config.generations}")
    if not (math.isfinite(config.sigma0) and config.sigma0 > 0):
        raise ValueError(f"sigma0: expected a positive number, got {config.sigma0}")
    check_tau(config.tau)
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"max_steps: expected an integer >= 1 or None, got {config.max_steps}")
    if config.seconds is not None and not (math.isfinite(config.seconds) and config.seconds > 0):
        raise ValueError(f"seconds: expected a positive number or None, got {config.seconds}")
    if config.hidden < 0:
        raise ValueError(f"hidden: expected an integer >= 0, got {config.hidden}")
    if config.outputs < 0:
        raise ValueError(f"outputs: expected an integer >= 0, got {config.outputs}")
    if config.inputs not in INPUTS:
        raise ValueError(f"inputs: expected one of {INPUTS}, got {config.inputs!r}")
    if config.ensemble and config.real:
        raise ValueError("ensemble: the real game is one world; use ensemble without real")
    if config.dropout is not None and config.real:
        raise ValueError("dropout: the real game has no M to drop out of; use it without real")
    dc.check_dropout(config.dropout)
    if config.real_starts < 0:
        raise ValueError(f"real_starts: expected an integer >= 0, got {config.real_starts}")
    if config.real_starts and (config.real or config.ensemble):
        raise ValueError("real_starts: dreams of the run's own M only, not with real or ensemble")


def load_worlds(wm: WorldModel, folders, device) -> list[WorldModel]:
    """The ensemble's world models, each checked to share ``wm``'s game and V."""
    worlds = []
    for folder in folders:
        other = WorldModel.load(folder, game=wm.game.name, device=device)
        mine, theirs = wm.vae.state_dict(), other.vae.state_dict()
        same_v = wm.vae.config == other.vae.config and all(
            torch.equal(mine[k], theirs[k]) for k in mine
        )
        if not same_v:
            raise ValueError(
                f"ensemble: {folder} has another V; its z would mean something else to the "
                "controller, so every model of the ensemble must share the run's V"
            )
        worlds.append(other)
    return worlds


def _initial_params(config: EvolveConfig, wm: WorldModel, mask: np.ndarray) -> np.ndarray | None:
    """The searched parameters of ``config.init`` (None: start from zeros)."""
    if config.init is None:
        return None
    controller, _ = read_controller(config.init, game=wm.game.name)
    cfg = controller_config(wm, config.hidden, config.outputs)
    if controller.config != cfg:
        got = controller.config
        raise ValueError(
            f"init: {config.init} holds a controller of {got.num_params} parameters "
            f"({got.hidden} hidden units, {got.out_dim} outputs); this world model with "
            f"hidden={config.hidden}, outputs={config.outputs} needs {cfg.num_params} "
            f"({cfg.out_dim} outputs)"
        )
    flat = controller.get_flat().double().numpy()
    if np.any(flat[~mask] != 0):
        raise ValueError(
            f"init: {config.init} reads h, but inputs={config.inputs!r} holds its weights on "
            "M's state at 0"
        )
    return flat[mask]


def _real_starts(config: EvolveConfig, wm: WorldModel, run_dir: Path) -> RealStarts:
    """The bank of real starts from the run's recorded episodes."""
    if not (run_dir / LATENTS).exists():
        raise FileNotFoundError(
            f"real_starts: {run_dir / LATENTS} is missing; run encode first (the starts "
            "are the run's own encoded episodes)"
        )
    starts = RealStarts.from_latents(
        wm.mdnrnn, wm.game.executed_action, load_latents(run_dir), config.real_starts
    )
    print(f"real starts: {len(starts):,} states, every {config.real_starts}th frame", flush=True)
    return starts


def _same(value):
    """A config value as it reads back from JSON (tuples come back as lists)."""
    return list(value) if isinstance(value, tuple) else value


def rollout_seed(seed: int, generation: int, stream: int = 0) -> int:
    """The seed of a generation's rollouts (stream 1: the scores of the CMA mean)."""
    return int(np.random.SeedSequence([seed, generation, stream]).generate_state(1)[0]) >> 2


def _score(ev: dict) -> float:
    return ev.get("score", ev["mean"])


def _repair_metrics(path: Path, generation: int, last_row: dict | None) -> None:
    """Keep the rows of the checkpointed generations (a kill may leave one extra or missing)."""
    rows = [r for r in read_jsonl(path) if 0 < r.get("generation", 0) <= generation]
    rows = list({r["generation"]: r for r in rows}.values())
    if last_row and all(r["generation"] != last_row["generation"] for r in rows):
        rows.append(last_row)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _inputs(wm_dir: Path, config: EvolveConfig) -> dict:
    """The dreams a controller is evolved in: the world model and any ensemble members."""
    inputs = {"world_model": provenance.file_digest(wm_dir / WM_WEIGHTS)}
    for i, folder in enumerate(config.ensemble):
        inputs[f"ensemble{i}"] = provenance.file_digest(Path(folder) / WM_WEIGHTS)
    return inputs


def run(config: EvolveConfig, run_dir) -> Path:
    """Evolve a controller in the run's world model; return the folder holding it."""
    _check(config)
    wm_dir = run_world_model(run_dir)
    return evolve(config, wm_dir, wm_dir.parent / evolve_dir_name(config))


def evolve(config: EvolveConfig, wm_dir, out) -> Path:
    """Evolve a controller in the world model in ``wm_dir``, writing (and resuming) ``out``."""
    _check(config)
    set_threads(config.threads)
    wm_dir, out = Path(wm_dir), Path(out)
    wm = WorldModel.load(wm_dir, device=config.device)
    game = wm.game.name
    cfg = controller_config(wm, config.hidden, config.outputs)  # checks outputs first
    out.mkdir(parents=True, exist_ok=True)
    mask = input_mask(wm, config.inputs, cfg)
    x0 = _initial_params(config, wm, mask)
    es = CMAES(int(mask.sum()), config.popsize, config.sigma0, config.seed, x0)

    def full(x: np.ndarray) -> np.ndarray:
        """Searched parameters (P, k) -> controller parameters (P, n), zeros elsewhere."""
        params = np.zeros((len(x), len(mask)))
        params[:, mask] = x
        return params

    log = {"evals": [], "best_eval": None, "last_row": None}
    best_eval_x = None
    inputs = _inputs(wm_dir, config)
    if (out / CMA_FILE).exists():
        provenance.check(out, "evolve", inputs)
        arrays, values = load_checkpoint(out / CMA_FILE)
        old = values["config"]
        keys = [k for k in RESUME_KEYS if not (k == "tau" and config.real)]
        default = asdict(EvolveConfig())  # keys added since ``old`` was written
        changed = [k for k in keys if _same(old.get(k, default[k])) != _same(getattr(config, k))]
        if changed:
            k = changed[0]
            raise RunDirError(
                f"{out}: started with {k}={old.get(k)!r}, now {k}={getattr(config, k)!r}; "
                f"use the same value to resume, or delete {out / CMA_FILE} to start over"
            )
        es.load_state({k[4:]: v for k, v in arrays.items() if k.startswith("cma.")}, values["cma"])
        log = values["log"]
        best_eval_x = arrays.get("best_eval_x")
    save_config(out / CONFIG_NAME, config)
    if es.generation < config.generations or provenance.recorded(out) is None:
        provenance.record(out, inputs)
    _repair_metrics(out / METRICS_FILE, es.generation, log["last_row"])
    meta = {
        "tau": None if config.real else config.tau,
        "trained_in": "real" if config.real else "dream",
        "popsize": config.popsize,
        "trials": config.trials,
        "seed": config.seed,
        "inputs": config.inputs,
        "init": config.init,
    }
    if config.ensemble:
        meta["ensemble"] = list(config.ensemble)
    if config.dropout is not None:
        meta["dropout"] = config.dropout
    if config.real_starts:
        meta["real_starts"], meta["max_steps"] = config.real_starts, config.max_steps

    def save_best() -> None:
        best = log["best_eval"]
        save_controller(
            out,
            full(best_eval_x[None])[0],
            game,
            {**meta, "generations": best["generation"], "eval": best, "evals": log["evals"]},
            hidden=config.hidden,
            outputs=cfg.out_dim,
        )

    if es.generation >= config.generations:
        if best_eval_x is not None and not (out / WEIGHTS_FILE).exists():
            save_best()
        return out
    if config.real:
        evaluator = RealEvaluator(wm_dir, config.workers, config.max_steps, controller=cfg)
    else:
        worlds = load_worlds(wm, config.ensemble, config.device)
        starts = _real_starts(config, wm, wm_dir.parent) if config.real_starts else None
        evaluator = DreamEvaluator(
            wm, config.tau, config.max_steps, worlds, cfg, starts, dropout=config.dropout
        )
    where = "real" if config.real else f"tau={config.tau:g}"

    def score_mean(gen: int) -> dict:
        """Score the CMA mean on the evaluation rollouts; keep it if it is the best so far."""
        nonlocal best_eval_x
        mean = es.mean
        r = evaluator.returns(
            full(mean[None]), config.eval_rollouts, rollout_seed(config.seed, 0, stream=1)
        )[0]
        ev = {
            "generation": gen,
            "mean": float(r.mean()),
            "std": float(r.std()),
            "rollouts": config.eval_rollouts,
        }
        if config.ensemble:  # kept by the fitness CMA-ES maximises: the worst model's mean
            ev["model_means"] = [float(m) for m in evaluator.model_means(r[None])[0]]
            ev["score"] = min(ev["model_means"])
        log["evals"].append(ev)
        if log["best_eval"] is None or _score(ev) > _score(log["best_eval"]):
            log["best_eval"], best_eval_x = ev, mean
        save_best()
        return ev

    # a wall-time budget ends the run long before a large generation count: no false ETA
    total = None if config.seconds is not None else config.generations
    bar = tqdm(total=total, initial=es.generation, desc=f"evolve {where}", unit="gen")
    started, last_seconds = time.time(), 0.0
    with evaluator:
        if x0 is not None and not log["evals"]:
            score_mean(0)  # the starting controller, so fine-tuning keeps it unless it improves
        while es.generation < config.generations:
            t0, steps0 = time.time(), evaluator.steps
            gen = es.generation + 1
            # the last generation of the budget: the next one would not fit in it
            out_of_time = (
                config.seconds is not None
                and t0 - started + 2 * last_seconds > config.seconds
                and last_seconds > 0
            )
            X = es.ask()
            returns = evaluator.returns(full(X), config.trials, rollout_seed(config.seed, gen))
            fitness = evaluator.fitness(returns)
            es.tell(fitness)
            row = {
                "generation": gen,
                "best": float(fitness.max()),
                "mean": float(fitness.mean()),
                "worst": float(fitness.min()),
                "sigma": es.sigma,
                "steps": int(evaluator.steps - steps0),
            }
            if gen % config.eval_every == 0 or gen == config.generations or out_of_time:
                ev = score_mean(gen)
                row["eval_mean"], row["eval_std"] = ev["mean"], ev["std"]
                if "score" in ev:
                    row["eval_score"] = ev["score"]
            row["seconds"] = round(time.time() - t0, 3)
            log["last_row"] = row
            arrays, values = es.state()
            arrays = {f"cma.{k}": v for k, v in arrays.items()}
            if best_eval_x is not None:
                arrays["best_eval_x"] = best_eval_x
            save_checkpoint(
                out / CMA_FILE, arrays, {"cma": values, "log": log, "config": asdict(config)}
            )
            log_metrics(out / METRICS_FILE, **row)
            bar.update(1)
            postfix = {"best": f"{row['best']:.1f}", "mean": f"{row['mean']:.1f}",
                       "sigma": f"{row['sigma']:.3f}"}  # fmt: skip
            if config.seconds is not None:
                left = max(config.seconds - (time.time() - started), 0)
                postfix["left"] = f"{int(left // 60)}:{int(left % 60):02d}"
            bar.set_postfix(postfix)
            last_seconds = row["seconds"]
            if out_of_time:
                break
    bar.close()
    return out
