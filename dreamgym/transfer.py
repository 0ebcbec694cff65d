"""Any agent's transfer: its scores in N dreams and N real episodes, side by side.

``score_transfer(agent, dream_id)`` plays ``agent`` (any ``policy(obs) -> action``
callable, or a saved agent: an SB3 zip or a controller folder, see
``dreamgym.agents``) in ``episodes`` dreams and ``episodes`` real episodes and
returns the report ``dreamgym evaluate --agent`` writes (``dreamgym.reports``): a
``"dream"`` and a ``"real"`` part, each with the keys of the controllers'
evaluation report (mean, std, min, max, returns, seeds, ...) plus ``ci95``, the
95% confidence interval of the mean (Student's t), and ``dream_real_ratio``, the
dream's mean over the real one. The seeds are fixed: real episode i uses the game
seed ``seed + i``; the dreams are one batch of ``episodes`` dreams reset with
``seed`` (each dream's first episode counts), so the same agent and seed score
the same every time.

```python
>>> report = score_transfer("runs/ppo_doom.zip", "DreamDoom-v0", episodes=100)
>>> report["dream"]["mean"], report["real"]["mean"], report["real"]["ci95"]
```
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dreamgym.agents import Agent, load_agent, obs_mode_of
from dreamgym.pools import play_each, run_all
from dreamgym.reports import summary, transfer_report
from dreamgym.shipped import load_world_model
from dreamgym.spaces import OBS_MODES, check_choice, check_positive_int
from dreamgym.workers import GamePool
from dreamgym.world_model import WorldModel
from dreamgym.wrappers import game_of, make_real


def _actions(policy: Callable, obs: np.ndarray, batched: bool) -> np.ndarray:
    if batched:
        return np.asarray(policy(obs))
    return np.stack([np.asarray(policy(o)) for o in obs])


def score_dreams(
    policy: Callable,
    dream_id: str,
    episodes: int,
    seed: int,
    batched: bool = False,
    progress: Callable[[int], Any] | None = None,
    **dream_kwargs: Any,
) -> np.ndarray:
    """The returns of ``episodes`` dreams played by ``policy``, one batch reset with ``seed``.

    ``dream_kwargs`` go to ``gym.make_vec`` (``world_model``, ``tau``, ``obs_mode``,
    ``max_episode_steps``, ``starts``, ...). ``batched``: ``policy`` takes the whole
    batch of observations at once; otherwise it is called once per dream.
    """
    env = gym.make_vec(dream_id, num_envs=episodes, **dream_kwargs)
    returns = np.full(episodes, np.nan)
    try:
        obs, _ = env.reset(seed=seed)
        while np.isnan(returns).any():  # each dream's first episode; the game's limit ends it
            obs, _, _, _, info = env.step(_actions(policy, obs, batched))
            if "_episode" in info:
                ended = info["_episode"] & np.isnan(returns)
                returns[ended] = info["episode"]["r"][ended]
                if progress is not None and ended.any():
                    progress(int(ended.sum()))
    finally:
        env.close()
    return returns


def play_real(policy: Callable, env: gym.Env, seed: int) -> float:
    """One real episode of ``policy`` from ``env.reset(seed=seed)``: its return."""
    obs, _ = env.reset(seed=int(seed))
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += float(reward)
        done = terminated or truncated
    return total


_worker: tuple | None = None  # (policy, real env): one per worker process


def _init_worker(policy, dream_id: str, real_kwargs: dict) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = (policy, make_real(dream_id, **real_kwargs))


def _worker_episode(seed: int) -> float:
    return play_real(*_worker, seed)


def check_picklable(policy: Callable) -> None:
    """A ValueError unless ``policy`` pickles, as worker processes receive it."""
    try:
        pickle.dumps(policy)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise ValueError(
            f"policy: workers > 1 sends the policy to worker processes by pickle, and it does "
            f"not pickle ({e}); use workers=1 or a module-level function"
        ) from None


def score_real(
    policy: Callable,
    dream_id: str,
    episodes: int,
    seed: int,
    workers: int = 1,
    progress: Callable[[int], Any] | None = None,
    **real_kwargs: Any,
) -> np.ndarray:
    """The returns of ``episodes`` real episodes of ``policy``; episode i uses seed ``seed + i``.

    ``real_kwargs`` go to ``make_real``. ``workers`` > 1 plays them in that many
    worker processes, one torch thread each; the policy reaches them by pickle (a
    loaded ``Agent`` pickles as the call that loads it; a lambda does not pickle).
    """
    seeds = [seed + i for i in range(episodes)]
    if workers <= 1:
        env = make_real(dream_id, **real_kwargs)
        return np.array(play_each(env, partial(play_real, policy), seeds, progress))
    check_picklable(policy)
    with GamePool(workers, _init_worker, (policy, dream_id, real_kwargs)) as pool:
        return np.array(run_all(pool, _worker_episode, [(s,) for s in seeds], progress))


def load_agent_for(
    agent: str | os.PathLike,
    dream_id: str,
    world_model: str | os.PathLike | WorldModel | None = None,
    obs_mode: str | None = None,
    max_steps: int | None = None,
    algo: str | None = None,
    trust: bool = False,
) -> Agent:
    """A saved agent (SB3 zip or controller folder) loaded on the spaces of ``dream_id``'s
    dream in the agent's own ``obs_mode`` (given: it must agree); see ``load_agent``."""
    spec, registered = game_of(dream_id)
    mode = obs_mode_of(agent)
    if obs_mode is not None and check_choice("obs_mode", obs_mode, OBS_MODES) != mode:
        raise ValueError(f"obs_mode: {agent} observes {mode}, not {obs_mode}")
    wm = load_world_model(spec, world_model or registered.get("world_model"), "cpu")
    env = gym.make(spec.dream_id, world_model=wm, obs_mode=mode, max_episode_steps=max_steps)
    return load_agent(agent, env.observation_space, env.action_space, algo, trust)


def _load(agent, spec, wm, limit: int, obs_mode, algo, trust) -> tuple[Callable, str]:
    """(the policy, what it observes): a path loads as an ``Agent``, an ``Agent`` observes
    its own ``obs_mode``, any other callable ``obs_mode`` (None: latent)."""
    if obs_mode is not None:
        check_choice("obs_mode", obs_mode, OBS_MODES)
    if isinstance(agent, (str, os.PathLike)):
        agent = load_agent_for(agent, spec.dream_id, wm, obs_mode, limit, algo, trust)
    if not callable(agent):
        raise TypeError(f"agent: expected a callable policy(obs) or a path, got {agent!r}")
    if not isinstance(agent, Agent):
        return agent, obs_mode or "latent"
    if obs_mode is not None and obs_mode != agent.obs_mode:
        raise ValueError(f"obs_mode: {agent.source} observes {agent.obs_mode}, not {obs_mode}")
    return agent, agent.obs_mode


def score_transfer(
    agent: Callable | str | os.PathLike,
    dream_id: str,
    episodes: int = 100,
    seed: int = 0,
    world_model: str | os.PathLike | WorldModel | None = None,
    tau: float | None = None,
    obs_mode: str | None = None,
    pixels: str = "reconstructed",
    max_steps: int | None = None,
    starts: str = "first",
    dropout: float | None = None,
    workers: int = 1,
    algo: str | None = None,
    trust: bool = False,
    batched: bool = False,
    progress: Callable[[int], Any] | None = None,
    device: str = "cpu",
    threads: int | None = 1,
) -> dict[str, Any]:
    """Score ``agent`` in ``episodes`` dreams and ``episodes`` real episodes; the report.

    ``agent``: a callable ``policy(obs) -> action`` (``batched``: it takes the dreams'
    batch of observations at once; a loaded ``Agent`` always does), or the path of
    an SB3 zip or a controller folder (``algo``, ``trust``: see ``load_agent``;
    nothing is unpickled unless ``trust``).
    ``obs_mode``: what it observes (None: a saved agent's own, else ``"latent"``);
    ``pixels``: the real game's frames with ``obs_mode="pixels"`` (see ``make_real``).
    ``tau`` (None: a controller's training temperature, else the game's default),
    ``starts``, ``dropout``: the dreams'. ``max_steps``: the episode limit (None:
    the game's). ``workers``: real-game processes (``score_real``). ``progress(n)``
    is called as episodes finish. ``device``: where the dreams run (the real game's
    V and M run on the CPU). ``threads``: torch threads of this process while it
    scores, restored after (None: as they are); one is fastest for batches of a few
    dozen dreams: on 2 busy cores, 20 Doom dreams and an MLP agent took 5 ms a step
    with one thread and 70 to 165 ms with two. The report is described in the
    module's docstring.
    """
    with torch_threads(threads):
        return _score_transfer(
            agent, dream_id, episodes, seed, world_model, tau, obs_mode, pixels, max_steps,
            starts, dropout, workers, algo, trust, batched, progress, device,
        )  # fmt: skip


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch threads (None: as they are), then restore the count."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(check_positive_int("threads", n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _score_transfer(
    agent, dream_id, episodes, seed, world_model, tau, obs_mode, pixels, max_steps, starts,
    dropout, workers, algo, trust, batched, progress, device,
) -> dict[str, Any]:  # fmt: skip
    spec, registered = game_of(dream_id)
    episodes = check_positive_int("episodes", episodes)
    wm = load_world_model(spec, world_model or registered.get("world_model"), device)
    limit = check_positive_int("max_steps", max_steps or spec.max_episode_steps)
    policy, mode = _load(agent, spec, wm, limit, obs_mode, algo, trust)
    saved = policy if isinstance(policy, Agent) else None
    trained_tau = saved.info.get("tau") if saved else None
    tau = tau if tau is not None else trained_tau or spec.default_tau
    if workers > 1:
        check_picklable(policy)  # before anything is played
    env_kwargs = {"obs_mode": mode, "max_episode_steps": limit}
    t0 = time.time()
    dream = score_dreams(
        policy, spec.dream_id, episodes, seed, batched or getattr(policy, "batched", False),
        progress, world_model=wm, tau=tau, starts=starts, dropout=dropout, **env_kwargs,
    )  # fmt: skip
    t1 = time.time()
    real_wm = world_model  # as given: a folder loads in each worker, an object stays put
    if mode == "pixels":
        env_kwargs["pixels"] = pixels
    real = score_real(policy, spec.dream_id, episodes, seed, workers, progress,
                      world_model=real_wm, **env_kwargs)  # fmt: skip
    t2 = time.time()
    meta = {
        "game": spec.name,
        "agent": str(saved.source) if saved else getattr(agent, "__name__", repr(agent)),
        "kind": saved.kind if saved else "callable",
        "algo": saved.algo if saved else None,
        "obs_mode": mode,
        "pixels": env_kwargs.get("pixels"),
        "episodes": episodes,
        "world_model": _name(world_model, spec),
    }
    part = {"game": spec.name, "trained_tau": trained_tau, "episodes": episodes, "max_steps": limit}
    return transfer_report(
        meta,
        {"mode": "dream", **part, "tau": tau, "starts": starts,
         "dropout": wm.dropout if dropout is None else dropout, **summary(dream),
         "seeds": [seed], "wall_seconds": t1 - t0},
        {"mode": "real", **part, "tau": None, "starts": None, "dropout": None, **summary(real),
         "seeds": [seed + i for i in range(episodes)], "wall_seconds": t2 - t1},
    )  # fmt: skip


def _name(world_model, spec) -> str | None:
    """How a report names the world model: its folder (None for one given as an object)."""
    if world_model is None:
        from dreamgym.shipped import shipped_dir

        return str(shipped_dir(spec))
    return str(world_model) if isinstance(world_model, (str, os.PathLike)) else None


__all__ = [
    "score_transfer", "load_agent_for", "score_dreams", "score_real", "play_real",
    "check_picklable", "torch_threads",
]  # fmt: skip
