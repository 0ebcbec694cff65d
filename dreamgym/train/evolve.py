"""Stage 5: CMA-ES over the controller's parameters, with its fitness scored in the dream.

``run(config, run_dir)`` evolves a controller the
paper's way: population 64, 16 rollouts per member, fitness = mean return,
sigma0 0.1 from zeros; the whole population's rollouts are one batched dream
(``--real``: worker processes in the real game). Every ``eval_every``
generations the CMA mean is scored on ``eval_rollouts`` rollouts and the best
mean so far is saved as the controller. The CMA state is checkpointed every
generation (safetensors + JSON, no pickle), so a rerun resumes.

The folder ``evolve-<id>/`` (``folder_name``: the id hashes the settings that shape
the controller; ``out`` names another) holds ``evolve.json`` (the config),
``cma.safetensors`` (the checkpoint), ``metrics.jsonl`` (per generation: best, mean
and worst fitness, sigma, dream steps, seconds, and ``eval_mean`` / ``eval_std``
where the mean was scored) and ``controller.safetensors`` + ``controller.json``
(the CMA mean that scored best, with every score). The generations are
``search.search``'s ask/tell loop; what varies (dream or real game, an ensemble,
real starts, the searched parameters) is in the evaluator and the mask built here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dreamgym import dream_core as dc
from dreamgym._io import METRICS_FILE, log_metrics
from dreamgym.cmaes import CMAES
from dreamgym.controller import ControllerConfig, unflatten
from dreamgym.policy import WEIGHTS_FILE, controller_config, read_controller, save_controller
from dreamgym.pools import check_backend
from dreamgym.rollouts import DreamEvaluator, RealEvaluator
from dreamgym.spaces import check_tau
from dreamgym.starts import RealStarts
from dreamgym.train import provenance, search
from dreamgym.train.common import LATENTS, save_checkpoint, set_threads
from dreamgym.train.encode import load_latents
from dreamgym.world_model import WEIGHTS_FILE as WM_WEIGHTS
from dreamgym.world_model import WorldModel

CMA_FILE = "cma.safetensors"
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
    backend: str = "local"
    """Where the real-game workers run (with ``real``): ``local`` processes, or ``ray``
    actors on a Ray cluster (``pip install 'dreamgym[ray]'``)."""
    ray_address: str | None = None
    """The Ray cluster to join (with ``backend`` ``ray``; None: start a local Ray)."""
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
    out: str | None = None
    """The folder to write (None: ``evolve-<id>`` beside the run's world model, the id a
    hash of the settings that shape the controller, so the same command resumes it)."""


def input_mask(wm: WorldModel, inputs: str, cfg: ControllerConfig) -> np.ndarray:
    """Which flat parameters of a ``cfg`` controller CMA-ES searches (True) for ``inputs``."""
    mask = np.ones(cfg.num_params, dtype=bool)
    if inputs == "z":
        first = "hidden_weight" if cfg.hidden else "weight"  # the layer that reads the input
        weight = unflatten(cfg, mask)[first]  # (fan_out, in_dim), a view into mask
        weight[:, wm.mdnrnn.config.z_dim :] = False  # the [c,] h columns
    return mask


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
    check_backend(config.backend, config.ray_address)
    if config.backend != "local" and not config.real:
        raise ValueError("backend: the dream runs in this process; --backend ray goes with --real")
    if config.real_starts < 0:
        raise ValueError(f"real_starts: expected an integer >= 0, got {config.real_starts}")
    if config.real_starts and (config.real or config.ensemble):
        raise ValueError("real_starts: dreams of the run's own M only, not with real or ensemble")


def load_worlds(wm: WorldModel, folders, device, option: str = "ensemble") -> list[WorldModel]:
    """The world models in ``folders``, each checked to share ``wm``'s game and V
    (``option``: the setting that named them, for the error)."""
    worlds = []
    for folder in folders:
        other = WorldModel.load(folder, game=wm.game.name, device=device)
        mine, theirs = wm.vae.state_dict(), other.vae.state_dict()
        same_v = wm.vae.config == other.vae.config and all(
            torch.equal(mine[k], theirs[k]) for k in mine
        )
        if not same_v:
            raise ValueError(
                f"{option}: {folder} has another V; its z would mean something else to the "
                "controller, so every one of these world models must share the run's V"
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
        wm.members, wm.game.executed_action, load_latents(run_dir), config.real_starts
    )
    print(f"real starts: {len(starts):,} states, every {config.real_starts}th frame", flush=True)
    return starts


def rollout_seed(seed: int, generation: int, stream: int = 0) -> int:
    """The seed of a generation's rollouts (stream 1: the scores of the CMA mean)."""
    return int(np.random.SeedSequence([seed, generation, stream]).generate_state(1)[0]) >> 2


def _score(ev: dict) -> float:
    return ev.get("score", ev["mean"])


def _inputs(wm_dir: Path, config: EvolveConfig) -> dict:
    """What a search starts from: the world model, any ensemble members, and the weights
    of ``init`` (a folder rewritten since is another start)."""
    inputs = {"world_model": provenance.file_digest(wm_dir / WM_WEIGHTS)}
    for i, folder in enumerate(config.ensemble):
        inputs[f"ensemble{i}"] = provenance.file_digest(Path(folder) / WM_WEIGHTS)
    if config.init:
        inputs["init"] = provenance.file_digest(Path(config.init) / WEIGHTS_FILE)
    return inputs


def resume_keys(config: EvolveConfig) -> tuple[str, ...]:
    """The fields a resumed run must share with the run it continues (tau: not with ``real``)."""
    return tuple(k for k in RESUME_KEYS if not (k == "tau" and config.real))


def folder_name(config: EvolveConfig) -> str:
    """``evolve-<id>``: the folder ``run`` writes, named by the settings that shape the
    controller (see ``search.run_id``)."""
    return search.folder_name("evolve", config, resume_keys(config))


def run(config: EvolveConfig, run_dir) -> Path:
    """Evolve a controller in the run's world model; return the folder holding it."""
    _check(config)
    wm_dir = provenance.run_world_model(run_dir)
    keys = resume_keys(config)
    out = config.out or search.run_folder(wm_dir.parent, "evolve", config, keys, CONFIG_NAME)
    return evolve(config, wm_dir, out)


def _meta(config: EvolveConfig) -> dict:
    """What ``controller.json`` records of how the controller was evolved."""
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
    return meta


class _Run:
    """What a run of evolve carries from generation to generation and checkpoints: CMA-ES,
    the scores of its mean, and the mean that scored best (``best_x``)."""

    def __init__(self, config: EvolveConfig, es: CMAES, mask: np.ndarray, cfg, out: Path, game):
        self.config, self.es, self.out, self.game = config, es, out, game
        self.mask = mask  # the searched parameters of a ``cfg`` controller
        self.cfg = cfg
        self.log = {"evals": [], "best_eval": None, "last_row": None}
        self.best_x: np.ndarray | None = None

    def full(self, x: np.ndarray) -> np.ndarray:
        """Searched parameters (P, k) -> controller parameters (P, n), zeros elsewhere."""
        params = np.zeros((len(x), len(self.mask)))
        params[:, self.mask] = x
        return params

    def load(self, arrays: dict, values: dict) -> None:
        cma = {k[4:]: v for k, v in arrays.items() if k.startswith("cma.")}
        self.es.load_state(cma, values["cma"])
        self.log, self.best_x = values["log"], arrays.get("best_eval_x")

    def save_best(self) -> None:
        """Write the best-scoring mean as the controller folder, with every score."""
        best = self.log["best_eval"]
        info = {**_meta(self.config), "generations": best["generation"], "eval": best,
                "evals": self.log["evals"]}  # fmt: skip
        params = self.full(self.best_x[None])[0]
        save_controller(self.out, params, self.game, info, hidden=self.config.hidden,
                        outputs=self.cfg.out_dim)  # fmt: skip

    def score_mean(self, evaluator, generation: int) -> dict:
        """Score the CMA mean on the evaluation rollouts, keep it if it is the best so far;
        return the metrics row's fields of the score."""
        config, mean = self.config, self.es.mean
        seed = rollout_seed(config.seed, 0, stream=1)  # the same rollouts every time
        r = evaluator.returns(self.full(mean[None]), config.eval_rollouts, seed)[0]
        ev = {"generation": generation, "mean": float(r.mean()), "std": float(r.std()),
              "rollouts": config.eval_rollouts}  # fmt: skip
        if config.ensemble:  # kept by the fitness CMA-ES maximises: the worst model's mean
            ev["model_means"] = [float(m) for m in evaluator.model_means(r[None])[0]]
            ev["score"] = min(ev["model_means"])
        self.log["evals"].append(ev)
        if self.log["best_eval"] is None or _score(ev) > _score(self.log["best_eval"]):
            self.log["best_eval"], self.best_x = ev, mean
        self.save_best()
        fields = {"eval_mean": ev["mean"], "eval_std": ev["std"]}
        return fields | ({"eval_score": ev["score"]} if "score" in ev else {})

    def checkpoint(self, row: dict) -> None:
        """Save CMA-ES, the scores and ``row`` (restored if a kill loses its log line)."""
        self.log["last_row"] = row
        arrays, values = self.es.state()
        arrays = {f"cma.{k}": v for k, v in arrays.items()}
        if self.best_x is not None:
            arrays["best_eval_x"] = self.best_x
        values = {"cma": values, "log": self.log, "config": asdict(self.config)}
        save_checkpoint(self.out / CMA_FILE, arrays, values)


def _evaluator(config: EvolveConfig, wm: WorldModel, wm_dir: Path, cfg):
    """What scores controllers: worker processes in the real game, or batched dreams."""
    if config.real:
        where = {"backend": config.backend, "ray_address": config.ray_address}
        return RealEvaluator(wm_dir, config.workers, config.max_steps, controller=cfg, **where)
    worlds = load_worlds(wm, config.ensemble, config.device)
    starts = _real_starts(config, wm, wm_dir.parent) if config.real_starts else None
    return DreamEvaluator(
        wm, config.tau, config.max_steps, worlds, cfg, starts, dropout=config.dropout
    )


def evolve(config: EvolveConfig, wm_dir, out) -> Path:
    """Evolve a controller in the world model in ``wm_dir``, writing (and resuming) ``out``."""
    _check(config)
    set_threads(config.threads)
    wm_dir, out = Path(wm_dir), Path(out)
    wm = WorldModel.load(wm_dir, device=config.device)
    cfg = controller_config(wm, config.hidden, config.outputs)  # checks outputs first
    out.mkdir(parents=True, exist_ok=True)
    mask = input_mask(wm, config.inputs, cfg)
    x0 = _initial_params(config, wm, mask)
    es = CMAES(int(mask.sum()), config.popsize, config.sigma0, config.seed, x0)
    state = _Run(config, es, mask, cfg, out, wm.game.name)
    inputs = _inputs(wm_dir, config)
    checkpoint = search.resume(out, config, resume_keys(config), CMA_FILE, "evolve", inputs)
    if checkpoint is not None:
        state.load(*checkpoint)
    finished = es.generation >= config.generations
    search.begin(out, CONFIG_NAME, config, inputs, finished)
    done = es.generation if checkpoint is not None else None
    search.repair_metrics(out / METRICS_FILE, "generation", done, state.log["last_row"])
    if finished:
        if state.best_x is not None and not (out / WEIGHTS_FILE).exists():
            state.save_best()
        return out
    with _evaluator(config, wm, wm_dir, cfg) as evaluator:
        _generations(state, evaluator, fine_tuning=x0 is not None)
    return out


def _generations(state: _Run, evaluator, fine_tuning: bool) -> None:
    """Run CMA-ES to ``config.generations`` (or the end of the budget), with a progress bar."""
    config, es = state.config, state.es
    where = "real" if config.real else f"tau={config.tau:g}"
    # a wall-time budget ends the run long before a large generation count: no false ETA
    total = None if config.seconds is not None else config.generations
    bar = tqdm(total=total, initial=es.generation, desc=f"evolve {where}", unit="gen")
    budget = search.Budget(config.seconds)
    if fine_tuning and not state.log["evals"]:
        state.score_mean(evaluator, 0)  # the starting controller: kept unless a mean beats it

    def fitness(X: np.ndarray, generation: int) -> tuple[np.ndarray, dict]:
        steps = evaluator.steps
        seed = rollout_seed(config.seed, generation)
        returns = evaluator.returns(state.full(X), config.trials, seed)
        return evaluator.fitness(returns), {"steps": int(evaluator.steps - steps)}

    def on_generation(row: dict, last: bool) -> None:
        if row["generation"] % config.eval_every == 0 or last:
            row |= state.score_mean(evaluator, row["generation"])
        row["seconds"] = round(budget.step_seconds(), 3)
        state.checkpoint(row)
        log_metrics(state.out / METRICS_FILE, **row)
        bar.update(1)
        postfix = {"best": f"{row['best']:.1f}", "mean": f"{row['mean']:.1f}",
                   "sigma": f"{row['sigma']:.3f}"}  # fmt: skip
        bar.set_postfix(postfix | ({"left": budget.left()} if config.seconds else {}))

    search.search(es, fitness, config.generations, on_generation, budget)
    bar.close()


__all__ = ["EvolveConfig", "run", "evolve", "folder_name", "rollout_seed"]
