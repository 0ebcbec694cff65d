"""Stage 1: real-game rollouts in worker processes, one atomic shard per episode.

Resumable: episode indices already in the manifest are never redone, a rerun
tops up to ``episodes`` kept episodes, and a kill loses only episodes in flight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dreamgym import data
from dreamgym.games import get_game
from dreamgym.train.common import WORLD_MODEL_DIR, check_options, open_run, save_config
from dreamgym.train.policies import (
    check_collect_policy,
    check_noise_space,
    make_collect_policy,
    noisy_controller,
)
from dreamgym.workers import GamePool


@dataclass
class CollectConfig:
    """Settings of the ``collect`` stage: real episodes written as shards to the run."""

    game: str
    """Game name (``doom_take_cover`` or ``car_racing``)."""
    episodes: int = 100
    """Kept episodes wanted in the run directory (a rerun tops up to this)."""
    workers: int = 2
    """Worker processes, each with its own copy of the game."""
    seed: int = 0
    """Episode i uses seed ``seed + i`` for the game and the policy."""
    min_frames: int | None = None
    """Episodes with at most this many frames are dropped (None: the game's default)."""
    max_steps: int | None = None
    """Episode limit (None: the game's)."""
    policy: str | None = None
    """Collection policy (None: the game's default; CarRacing: ``track``, ``fast_track`` or
    ``drive``, see ``dreamgym.train.policies``). A rerun with another policy tops up with it."""
    controller: str | None = None
    """A controller folder that drives instead of ``policy`` (the paper's iterative
    procedure: real episodes of a controller trained in the dream, so M learns where
    its dream flattered it). Its M is the one it was trained with: a model folder's
    own, the ``world_model/`` beside an evolve folder, else the run's."""
    noise: float = 0.1
    """With ``controller``: each episode draws an action-noise level in [0, noise] (the
    standard deviation of Gaussian noise added to every action, then clipped)."""
    noise_space: str = "action"
    """Where the noise goes: ``action`` (then clipped to the action space) or ``output``
    (the controller's tanh outputs, before they are mapped to the action, so a pedal the
    controller holds released stays released; see ``policies.noisy_controller``)."""


def _controller_world_model(controller: Path, run_dir: Path) -> Path:
    """The world model a controller folder was trained with (its h is that M's state)."""
    from dreamgym.train.evaluate import resolve_source

    try:
        return resolve_source(controller)[0]
    except FileNotFoundError:  # a bare controller folder: the run's own world model
        return run_dir / WORLD_MODEL_DIR


DEFAULT_MIN_FRAMES = {"doom_take_cover": 100, "car_racing": 0}

_env = None  # one real game per worker process


def _init_worker(game: str, max_steps: int, world_model: str | None = None) -> None:
    global _env
    import multiprocessing.util

    import torch

    torch.set_num_threads(1)
    if world_model is None:
        _env = get_game(game).make_real(max_episode_steps=max_steps)
    else:  # the controller reads [z, h]; the frames are kept from ``_env.frame``
        from dreamgym.wrappers import make_real

        dream_id = get_game(game).dream_id
        _env = make_real(dream_id, world_model=world_model, max_episode_steps=max_steps)
    # Worker processes end with os._exit, which skips atexit: close the game (and
    # ViZDoom's own engine process) through multiprocessing's finalizers instead.
    multiprocessing.util.Finalize(None, _env.close, exitpriority=10)


def _rollout(
    game: str, index: int, seed: int, folder: str, min_frames: int, config: CollectConfig
) -> dict:
    """Play one episode with the collection policy and write it (unless dropped)."""
    spec = get_game(game)
    rng = np.random.default_rng(seed)
    if config.controller is None:
        policy = make_collect_policy(spec, rng, config.policy, env=_env)
    else:
        from dreamgym.policy import load_controller

        sigma = rng.uniform(0, config.noise)
        controller = load_controller(config.controller)
        policy = noisy_controller(controller, spec, rng, sigma, config.noise_space)
    obs, _ = _env.reset(seed=seed)
    frames, actions, rewards, terms = [], [], [], []
    done = False
    while not done:
        a = policy(obs)
        frames.append(obs if config.controller is None else _env.frame)
        obs, r, term, trunc, _ = _env.step(a)
        actions.append(a)
        rewards.append(r)
        terms.append(term)
        done = term or trunc
    if len(frames) <= min_frames:
        return {"index": index, "frames": len(frames), "dropped": True}
    episode = {
        "frames": np.stack(frames),
        "actions": np.asarray(actions, np.float32).reshape(len(frames), spec.action_dim),
        "rewards": np.asarray(rewards, np.float32),
        "terminated": np.asarray(terms, bool),
    }
    return data.write_episode(Path(folder) / data.EPISODES_DIR, index, episode)


def _check(config: CollectConfig, game: str, run_dir: Path) -> str | None:
    """Refuse bad settings before any worker starts; the driving controller's world model."""
    spec = get_game(game)
    check_options(config, positive=("episodes", "workers", "max_steps"), at_least_zero=("seed",))
    if config.min_frames is not None and config.min_frames < 0:
        raise ValueError(f"--min-frames: expected an integer >= 0, got {config.min_frames}")
    check_collect_policy(spec, config.policy)  # a clear error before workers start
    world_model = None
    if config.controller is not None:
        from dreamgym.policy import read_controller

        read_controller(config.controller, game=game)  # a clear error before workers start
        if config.policy is not None:
            raise ValueError("policy and controller: give one of them, not both")
        if not (config.noise >= 0):
            raise ValueError(f"noise: expected a number >= 0, got {config.noise}")
        check_noise_space(config.noise_space)  # a clear error before workers start
        world_model = str(_controller_world_model(Path(config.controller), run_dir))
    return world_model


def run(config: CollectConfig, run_dir) -> Path:
    """Collect until the run directory holds ``config.episodes`` kept episodes."""
    run_dir, game = open_run(run_dir, config.game)
    spec = get_game(game)
    world_model = _check(config, game, run_dir)
    for problem in data.reconcile(run_dir):
        print(f"collect: {problem}; set aside (*.bad), a new episode replaces it", flush=True)
    save_config(run_dir / "collect.json", config)
    min_frames = DEFAULT_MIN_FRAMES[game] if config.min_frames is None else config.min_frames
    max_steps = config.max_steps or spec.max_episode_steps
    rows = data.read_manifest(run_dir)
    done_idx = {r["index"] for r in rows}
    kept = sum(not r.get("dropped") for r in rows)
    frames = sum(r["frames"] for r in rows if not r.get("dropped"))
    nbytes = sum(r.get("bytes", 0) for r in rows if not r.get("dropped"))
    if kept >= config.episodes:
        return run_dir
    next_index = max(done_idx, default=-1) + 1
    bar = tqdm(total=config.episodes, initial=kept, desc=f"collect {game}", unit="ep")
    t0, new_frames = time.time(), 0
    with GamePool(config.workers, _init_worker, (game, max_steps, world_model)) as pool:
        pending = set()
        while kept < config.episodes or pending:
            while (
                kept + len(pending) < config.episodes
                and len(pending) < 2 * config.workers
                and kept < config.episodes
            ):
                pending.add(
                    pool.submit(
                        _rollout, game, next_index, config.seed + next_index,
                        str(run_dir), min_frames, config,
                    )
                )  # fmt: skip
                next_index += 1
            finished, pending = pool.wait_first(pending)
            for fut in finished:
                if fut.cancelled():
                    continue
                row = fut.result()
                data.append_manifest(run_dir, row)
                new_frames += row["frames"]
                if not row.get("dropped"):
                    kept += 1
                    frames += row["frames"]
                    nbytes += row["bytes"]
                    bar.update(1)
                rate = new_frames / max(time.time() - t0, 1e-9)
                bar.set_postfix(
                    frames=frames,
                    fps=f"{rate:.0f}",
                    kb_per_frame=f"{nbytes / max(frames, 1) / 1024:.2f}",
                )
            if kept >= config.episodes:
                for fut in pending:
                    fut.cancel()
    bar.close()
    return run_dir
