"""Stage 1: real-game rollouts in worker processes, one atomic shard per episode.

Resumable: episode indices already in the manifest are never redone, a rerun
tops up to ``episodes`` kept episodes, and a kill loses only episodes in flight.
With ``backend="ray"`` the workers are Ray actors (on a cluster or a local Ray):
each encodes its episode's shard and this process writes it, so the files are
the ones the local workers write for the same seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dreamgym import data
from dreamgym.games import GameSpec, get_game
from dreamgym.pools import check_backend, open_pool
from dreamgym.train.common import WORLD_MODEL_DIR, check_options, open_run, save_config
from dreamgym.train.policies import (
    check_collect_policy,
    check_noise_space,
    make_collect_policy,
    noisy_controller,
)


@dataclass
class CollectConfig:
    """Settings of the ``collect`` stage: real episodes written as shards to the run."""

    game: str
    """Game: a name (``doom_take_cover``, ``car_racing``, a registered game), a Gymnasium id
    with pixels (``MiniGrid-Empty-5x5-v0``), or ``module:object`` naming a ``GameSpec``."""
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
    backend: str = "local"
    """Where the workers run: ``local`` processes, or ``ray`` actors on a Ray cluster
    (``pip install 'dreamgym[ray]'``; the same seeds give the same shards)."""
    ray_address: str | None = None
    """The Ray cluster to join (with ``backend`` ``ray``; None: start a local Ray)."""


def _controller_world_model(controller: Path, run_dir: Path) -> Path:
    """The world model a controller folder was trained with (its h is that M's state)."""
    from dreamgym.train.evaluate import resolve_source

    try:
        return resolve_source(controller)[0]
    except FileNotFoundError:  # a bare controller folder: the run's own world model
        return run_dir / WORLD_MODEL_DIR


DEFAULT_MIN_FRAMES = {"doom_take_cover": 100, "car_racing": 0}

_env = None  # one real game per worker process
_controller = None  # the controller that drives it (with ``controller``)


def _init_worker(game: str | GameSpec, max_steps: int, world_model=None, controller=None) -> None:
    """Make this worker's game (``world_model``: a folder or ``WorldModel``, to read
    [z, h]) and load its ``controller`` (a folder or a loaded policy)."""
    global _env, _controller
    import multiprocessing.util

    import torch

    torch.set_num_threads(1)
    if world_model is None:
        _env = get_game(game).make_real(max_episode_steps=max_steps)
    else:  # the controller reads [z, h]; the frames are kept from ``_env.frame``
        from dreamgym.wrappers import make_real

        dream_id = get_game(game).dream_id
        _env = make_real(dream_id, world_model=world_model, max_episode_steps=max_steps)
    if isinstance(controller, str | Path):
        from dreamgym.policy import load_controller

        controller = load_controller(controller)
    _controller = controller
    # Worker processes end with os._exit, which skips atexit: close the game (and
    # ViZDoom's own engine process) through multiprocessing's finalizers instead.
    multiprocessing.util.Finalize(None, _env.close, exitpriority=10)


def _play(spec, seed: int, config: CollectConfig) -> dict:
    """One episode of the collection policy (or noisy controller) with game seed ``seed``."""
    rng = np.random.default_rng(seed)
    if config.controller is None:
        policy = make_collect_policy(spec, rng, config.policy, env=_env)
    else:
        sigma = rng.uniform(0, config.noise)
        policy = noisy_controller(_controller, spec, rng, sigma, config.noise_space)
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
    return {
        "frames": np.stack(frames),
        "actions": np.asarray(actions, np.float32).reshape(len(frames), spec.env_action_dim),
        "rewards": np.asarray(rewards, np.float32),
        "terminated": np.asarray(terms, bool),
    }


def _rollout(
    game: str | GameSpec,
    index: int,
    seed: int,
    folder: str | None,
    min_frames: int,
    config: CollectConfig,
) -> dict:
    """Play one episode and write it (unless dropped) into ``folder``; its manifest row.

    ``folder`` None: the shard's bytes come back instead (``blob``, ``frames``,
    ``return``), for the caller to write with ``data.write_shard``.
    """
    episode = _play(get_game(game), seed, config)
    T = len(episode["frames"])
    if T <= min_frames:
        return {"index": index, "frames": T, "dropped": True}
    if folder is not None:
        return data.write_episode(Path(folder) / data.EPISODES_DIR, index, episode)
    blob = data.encode_episode(index, episode)
    return {"index": index, "frames": T, "return": float(np.sum(episode["rewards"])), "blob": blob}


def _land(run_dir: Path, result: dict) -> dict:
    """The manifest row of a finished episode, writing its shard if it came back as bytes."""
    if "blob" not in result:
        return result
    folder = run_dir / data.EPISODES_DIR
    return data.write_shard(folder, result["index"], result["blob"], result["frames"],
                            result["return"])  # fmt: skip


def _check(config: CollectConfig, game: str, run_dir: Path) -> str | None:
    """Refuse bad settings before any worker starts; the driving controller's world model."""
    spec = get_game(game)
    check_backend(config.backend, config.ray_address)
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


def _initargs(config: CollectConfig, game: str | GameSpec, max_steps: int, world_model: str | None):
    """The workers' ``_init_worker`` arguments: folders for local workers; for Ray actors,
    which may run on other machines, the loaded world model and controller."""
    if config.backend == "local":
        return (game, max_steps, world_model, config.controller)
    from dreamgym.policy import load_controller
    from dreamgym.world_model import WorldModel

    wm = None if world_model is None else WorldModel.load(world_model)
    controller = None if config.controller is None else load_controller(config.controller)
    return (game, max_steps, wm, controller)


def run(config: CollectConfig, run_dir) -> Path:
    """Collect until the run directory holds ``config.episodes`` kept episodes."""
    check_backend(config.backend, config.ray_address)  # before the run directory is made
    run_dir, game = open_run(run_dir, config.game)
    spec = get_game(game)
    world_model = _check(config, game, run_dir)
    for problem in data.reconcile(run_dir):
        print(f"collect: {problem}; set aside (*.bad), a new episode replaces it", flush=True)
    save_config(run_dir / "collect.json", config)
    min_frames = DEFAULT_MIN_FRAMES.get(game, 0) if config.min_frames is None else config.min_frames
    max_steps = config.max_steps or spec.max_episode_steps
    tally = _Tally(data.read_manifest(run_dir))
    if tally.kept >= config.episodes:
        return run_dir
    bar = tqdm(total=config.episodes, initial=tally.kept, desc=f"collect {game}", unit="ep")
    game_ref = spec if spec.source else game  # a user's game travels as its spec
    init = _initargs(config, game_ref, max_steps, world_model)
    folder = str(run_dir) if config.backend == "local" else None  # Ray: written here
    with open_pool(config.backend, config.workers, _init_worker, init,
                   ray_address=config.ray_address) as pool:  # fmt: skip
        _collect(pool, run_dir, config, (game_ref, folder, min_frames), tally, bar)
    bar.close()
    return run_dir


class _Tally:
    """What the manifest holds: the next index, kept episodes, their frames and bytes."""

    def __init__(self, rows: list[dict]):
        kept = [r for r in rows if not r.get("dropped")]
        self.next_index = max((r["index"] for r in rows), default=-1) + 1
        self.kept = len(kept)
        self.frames = sum(r["frames"] for r in kept)
        self.nbytes = sum(r.get("bytes", 0) for r in kept)
        self.new_frames, self.t0 = 0, time.time()

    def add(self, row: dict) -> bool:
        """Count a finished episode's manifest row; whether it was kept."""
        self.new_frames += row["frames"]
        if row.get("dropped"):
            return False
        self.kept += 1
        self.frames += row["frames"]
        self.nbytes += row["bytes"]
        return True


def _collect(pool, run_dir: Path, config: CollectConfig, task: tuple, tally: _Tally, bar) -> None:
    """Keep ``2 * workers`` episodes in flight until ``config.episodes`` are kept; each
    finished one lands in the run (its shard, then its manifest row). ``task``: the
    (game, folder, min_frames) of ``_rollout``."""
    game, folder, min_frames = task
    pending = set()
    while tally.kept < config.episodes or pending:
        while tally.kept + len(pending) < config.episodes and len(pending) < 2 * config.workers:
            i = tally.next_index
            pending.add(pool.submit(_rollout, game, i, config.seed + i, folder, min_frames, config))
            tally.next_index += 1
        finished, pending = pool.wait_first(pending)
        for fut in finished:
            if fut.cancelled():
                continue
            row = _land(run_dir, fut.result())
            data.append_manifest(run_dir, row)
            if tally.add(row):
                bar.update(1)
            rate = tally.new_frames / max(time.time() - tally.t0, 1e-9)
            kb = tally.nbytes / max(tally.frames, 1) / 1024
            bar.set_postfix(frames=tally.frames, fps=f"{rate:.0f}", kb_per_frame=f"{kb:.2f}")
        if tally.kept >= config.episodes:
            for fut in pending:
                fut.cancel()
