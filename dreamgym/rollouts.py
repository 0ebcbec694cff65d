"""Scoring controllers: a population in one batched dream, or in the real game with workers.

Both evaluators have the same shape, ``returns(params (P, n), trials, seed) ->
(P, trials)``, so CMA-ES fitness, the periodic score of the CMA mean and the
final evaluation are the same function in the dream and in the real game, and
the transfer gap is one number.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from dreamgym import dream_core as dc
from dreamgym.controller import ControllerConfig, batched_forward
from dreamgym.envs import game_from_config
from dreamgym.mdnrnn import LSTMState
from dreamgym.policy import controller_config
from dreamgym.pools import check_backend, open_pool, run_all
from dreamgym.spaces import check_tau
from dreamgym.starts import RealStarts
from dreamgym.world_model import CONFIG_FILE as WM_CONFIG
from dreamgym.world_model import WorldModel, read_json
from dreamgym.wrappers import make_real

COMPACT_BELOW = 0.875
"""The dream batch drops finished rows once fewer than this fraction of its rows live."""


def _as_params(params, cfg: ControllerConfig, device) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(params, np.float32), device=device)
    if p.ndim != 2 or p.shape[1] != cfg.num_params:
        raise ValueError(f"params: expected shape (P, {cfg.num_params}), got {tuple(p.shape)}")
    return p


# ---------------------------------------------------------------- the dream


@torch.no_grad()
def dream_rollouts(
    wm: WorldModel,
    params,
    trials: int,
    tau: float,
    generator: torch.Generator,
    max_steps: int | None = None,
    world: WorldModel | None = None,
    controller: ControllerConfig | None = None,
    starts: RealStarts | None = None,
    members: str | int = "sample",
    dropout: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Play every controller ``trials`` times in one batched dream.

    params (P, n) -> (returns (P, trials) float64, dream steps computed). Trial j
    of every controller starts from the same first frame (common random numbers).
    Episodes end on M's done or at ``max_steps``; finished rows are dropped from
    the batch, so they stop costing compute.

    ``world``: another world model with the same V plays the world (first frames,
    next z, reward, done), while ``wm``'s M only follows the z and actions to give the
    controller its h, as it does in the real game.

    ``controller``: the controller ``params`` make (None: the paper's linear C).

    ``starts``: dreams start from random real states of this bank instead of first
    frames (trial j of every controller from the same one), and play ``wm``.

    ``members``, ``dropout``: which member of an ensemble plays each dream, and the
    dropout rate of M's heads (``dream_core.vary``); trial j of every controller
    meets the same member and mask.
    """
    cfg = controller or controller_config(wm)
    spec = wm.game
    if starts is not None and world is not None:
        raise ValueError("starts: real starts hold wm's own M state; they play wm, not world")
    params = _as_params(params, cfg, wm.device)
    P = params.shape[0]
    N = P * trials
    max_steps = max_steps or spec.max_episode_steps
    sim = wm if world is None else world
    if starts is None:
        start = dc.initial_state(sim, trials, generator, dropout, members)
    else:
        start = dc.from_bank(sim, starts, trials, generator, dropout, members)
    state = dc.select(start, torch.arange(trials, device=wm.device).repeat(P))
    own = None if world is None else wm.mdnrnn.initial_state(N, device=wm.device)

    def act(state, rows, carry):
        row_params, own = carry
        obs = dc.observation(wm, state if own is None else dc.DreamState(state.z, own))
        y = batched_forward(cfg, row_params, obs.unsqueeze(1)).squeeze(1)  # (L, O)
        action = spec.controller_to_action(y)
        if own is not None:
            own = dc.follow(wm, own, state.z, action)
        return action, (row_params, own)

    carry = (params.repeat_interleave(trials, dim=0), own)  # (N, n) parameters of each row
    returns, steps = play_batch(sim, state, act, tau, generator, max_steps, carry)
    return returns.view(P, trials), steps


def play_batch(
    wm: WorldModel,
    state: dc.DreamState,
    act: Callable,
    tau: float,
    generator: torch.Generator,
    max_steps: int,
    carry: tuple = (),
) -> tuple[torch.Tensor, int]:
    """Step the batch of dreams ``state`` of ``wm`` until every one ends or ``max_steps``.

    Returns (each dream's return (N,) float64, dream steps computed).
    ``act(state, rows, carry) -> (action, carry)`` gives the live dreams' actions
    (``rows``: their indices in the batch) and the actor's per-dream ``carry`` (a
    tuple of tensors, ``LSTMState``s or None, one row per live dream). Finished
    dreams are dropped from the batch, state and carry alike, once fewer than
    ``COMPACT_BELOW`` of its rows live, so they stop costing compute.
    """
    N = state.z.shape[0]
    rows = torch.arange(N, device=wm.device)  # each live row's index in the batch
    alive = torch.ones(N, dtype=torch.bool, device=wm.device)
    returns = torch.zeros(N, dtype=torch.float64, device=wm.device)
    steps = 0
    for _ in range(max_steps):
        action, carry = act(state, rows, carry)
        state, reward, terminated = dc.step(wm, state, action, tau, generator)
        returns.index_add_(0, rows, torch.where(alive, reward, 0).double())
        steps += len(rows)
        alive &= ~terminated
        live = int(alive.sum())
        if live == 0:
            break
        if live < COMPACT_BELOW * len(rows):
            keep = alive.nonzero().squeeze(1)
            state, rows, alive = dc.select(state, keep), rows[keep], alive[keep]
            carry = tuple(_take(c, keep) for c in carry)
    return returns, steps


def _take(x, keep: torch.Tensor):
    """Rows ``keep`` of a tensor or an ``LSTMState`` (None stays None)."""
    if x is None:
        return None
    if isinstance(x, LSTMState):
        return LSTMState(x.h[keep], x.c[keep])
    return x[keep]


class DreamEvaluator:
    """Scores controllers in the dream of ``wm`` at temperature ``tau``.

    ``worlds``: more world models with the same V (an ensemble). Each controller then
    plays ``trials`` dreams in ``wm`` and in every one of them (see ``dream_rollouts``),
    and its fitness is its worst model's mean: an exploit of one M's errors scores
    only what the other Ms grant it. ``members``: for a world model that is itself an
    ensemble, ``"min"`` scores every controller in each member's dreams and keeps the
    worst member's mean in the same way; ``"sample"`` (each dream draws its member)
    or an int (one member) play it once; None plays none of ``wm``'s own dreams,
    only ``worlds``' (held-out dreams: C still reads ``wm``'s M). ``controller``: the
    controller the scored parameters make (None: the paper's linear C). ``starts``:
    dreams start from these real states (``RealStarts``) instead of real first frames.
    ``dropout``: the rate of M's dropout in every dream (None: the rate M was trained
    with; 0: none).
    """

    def __init__(
        self,
        wm: WorldModel,
        tau: float,
        max_steps: int | None = None,
        worlds=(),
        controller: ControllerConfig | None = None,
        starts: RealStarts | None = None,
        members: str | int | None = "min",
        dropout: float | None = None,
    ):
        self.wm, self.tau, self.max_steps = wm, check_tau(tau), max_steps
        self.controller, self.starts = controller, starts
        self.dropout = dc.check_dropout(dropout)
        if members is None:
            if not worlds:
                raise ValueError("members=None: no dreams to play; give worlds")
            own = []
        elif members == "min":
            own = [(None, k) for k in range(len(wm.members))]
        else:
            own = [(None, dc.check_members(wm, members))]
        if starts is not None:
            for _, member in own:
                dc.check_bank(wm, starts, member)
        # (world, member) pairs: None plays wm's own dream
        self.worlds = own + [(w, "sample") for w in worlds]
        self.steps = 0
        """Dream steps computed so far (a throughput counter)."""

    def returns(self, params, trials: int, seed: int, progress=None) -> np.ndarray:
        """(P, n) -> (P, trials * models) returns, model by model; the same seed gives
        the same dreams."""
        out = []
        for world, member in self.worlds:
            g = torch.Generator(device=self.wm.device).manual_seed(int(seed))
            ret, steps = dream_rollouts(
                self.wm, params, trials, self.tau, g, self.max_steps, world,
                controller=self.controller, starts=self.starts, members=member,
                dropout=self.dropout,
            )  # fmt: skip
            self.steps += steps
            if progress is not None:
                progress(ret.numel())
            out.append(ret.cpu().numpy())
        return np.concatenate(out, axis=1)

    def model_means(self, returns: np.ndarray) -> np.ndarray:
        """(P, trials * models) -> (P, models) mean return in each model's dreams."""
        P = returns.shape[0]
        return returns.reshape(P, len(self.worlds), -1).mean(axis=2)

    def fitness(self, returns: np.ndarray) -> np.ndarray:
        """(P, trials * models) -> (P,): the mean return in the model that grants least."""
        return self.model_means(returns).min(axis=1)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- the real game


def play_episode(
    env: gym.Env,
    wm: WorldModel,
    params,
    seed: int,
    max_steps: int,
    controller: ControllerConfig | None = None,
):
    """One real episode of the controller ``params`` (n,): (return, steps).

    ``controller``: the controller ``params`` make (None: the paper's linear C).
    """
    cfg = controller or controller_config(wm)
    p = _as_params(np.asarray(params).reshape(1, -1), cfg, "cpu")
    obs, _ = env.reset(seed=int(seed))
    total, t = 0.0, 0
    with torch.no_grad():
        while t < max_steps:
            x = torch.as_tensor(np.asarray(obs, np.float32), device="cpu").view(1, 1, -1)
            action = wm.game.controller_to_action(batched_forward(cfg, p, x)[0, 0])
            obs, reward, terminated, truncated, _ = env.step(wm.game.env_action(action).numpy())
            total, t = total + float(reward), t + 1
            if terminated or truncated:
                break
    return total, t


_worker: tuple | None = None  # (env, world model, controller config): one real game per process


def _init_worker(world_model, max_steps: int, controller: ControllerConfig | None) -> None:
    """Make this worker's game, seen through ``world_model`` (a folder or a ``WorldModel``)."""
    global _worker
    torch.set_num_threads(1)
    wm = world_model if isinstance(world_model, WorldModel) else WorldModel.load(world_model)
    env = make_real(wm.game.dream_id, world_model=wm, max_episode_steps=max_steps)
    _worker = (env, wm, controller)


def _worker_episode(params: np.ndarray, seed: int, max_steps: int) -> tuple[float, int]:
    env, wm, controller = _worker
    return play_episode(env, wm, params, seed, max_steps, controller)


class RealEvaluator:
    """Scores controllers in the real game, one episode per task, in worker processes.

    Trial j of every controller uses the game seed ``seed + j``. A worker that dies
    raises ``WorkerDiedError`` in the caller within ``poll`` seconds, never a hang
    (see ``dreamgym.workers``). ``controller``: the controller the scored
    parameters make (None: the paper's linear C). ``backend="ray"``: the workers are
    Ray actors on the cluster at ``ray_address`` (None: a local Ray), each given the
    loaded world model; an episode whose actor dies is played again.
    """

    def __init__(
        self,
        wm_dir: str | Path,
        workers: int = 2,
        max_steps: int | None = None,
        poll: float = 1.0,
        controller: ControllerConfig | None = None,
        backend: str = "local",
        ray_address: str | None = None,
    ):
        if workers < 1:
            raise ValueError(f"workers: expected an integer >= 1, got {workers}")
        check_backend(backend, ray_address)
        self.wm_dir = Path(wm_dir)
        self.spec = game_from_config(read_json(self.wm_dir / WM_CONFIG), str(self.wm_dir))
        self.max_steps = max_steps or self.spec.max_episode_steps
        self.workers = workers
        self.steps = 0
        # Ray actors may run on other machines: they get the loaded world model
        wm = str(self.wm_dir) if backend == "local" else WorldModel.load(self.wm_dir)
        init = (wm, self.max_steps, controller)
        self.pool = open_pool(backend, workers, _init_worker, init, poll, ray_address)

    def returns(self, params, trials: int, seed: int, progress=None) -> np.ndarray:
        """(P, n) -> (P, trials) returns; trial j of every controller uses seed ``seed + j``."""
        params = np.asarray(params, np.float32)
        P = params.shape[0]
        tasks = [(params[i], seed + j, self.max_steps) for i in range(P) for j in range(trials)]
        results = run_all(self.pool, _worker_episode, tasks, progress)  # [(return, steps)]
        self.steps += sum(steps for _, steps in results)
        return np.array([ret for ret, _ in results], np.float64).reshape(P, trials)

    def fitness(self, returns: np.ndarray) -> np.ndarray:
        """(P, trials) -> (P,) mean return."""
        return returns.mean(axis=1)

    def close(self, kill: bool = False) -> None:
        self.pool.close(kill)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = [
    "DreamEvaluator", "RealEvaluator", "dream_rollouts", "play_batch", "play_episode",
]  # fmt: skip
