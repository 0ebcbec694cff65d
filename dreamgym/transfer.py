"""Any agent's transfer: its scores in N dreams and N real episodes, side by side.

``score_transfer(agent, dream_id)`` plays ``agent`` (any ``policy(obs) -> action``
callable, or a saved agent: an SB3 zip or a controller folder, see
``dreamgym.agents``) in ``episodes`` dreams and ``episodes`` real episodes and
returns the report ``dreamgym evaluate --agent`` writes: a ``"dream"`` and a
``"real"`` part, each with the keys of the controllers' evaluation report (mean,
std, min, max, returns, seeds, ...) plus ``ci95``, the 95% confidence interval of
the mean (Student's t), and ``dream_real_ratio``, the dream's mean over the real
one. The seeds are fixed: real episode i uses the game seed ``seed + i``; the
dreams are one batch of ``episodes`` dreams reset with ``seed`` (each dream's
first episode counts), so the same agent and seed score the same every time.

```python
>>> report = score_transfer("runs/ppo_doom.zip", "DreamDoom-v0", episodes=100)
>>> report["dream"]["mean"], report["real"]["mean"], report["real"]["ci95"]
```
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dreamgym._version import __version__
from dreamgym.agents import Agent, load_agent, obs_mode_of
from dreamgym.shipped import load_world_model
from dreamgym.spaces import OBS_MODES, check_choice, check_positive_int
from dreamgym.workers import GamePool
from dreamgym.world_model import WorldModel, atomic_write_text
from dreamgym.wrappers import game_of, make_real


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile: the x with P(T <= x) = p (0.5 < p < 1), ``df`` >= 1."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # Simpson's rule on the density from 0 to x
        t = np.linspace(0.0, x, 4001)
        f = np.exp(log_norm - (df + 1) / 2 * np.log1p(t * t / df))
        return 0.5 + (t[1] - t[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def summary(returns) -> dict[str, Any]:
    """mean, std, ci95 (Student's t, None below 2 episodes), min, max and the returns."""
    r = np.asarray(returns, np.float64)
    mean = float(r.mean())
    ci = None
    if len(r) > 1:
        half = t_quantile(0.975, len(r) - 1) * float(r.std(ddof=1)) / math.sqrt(len(r))
        ci = [mean - half, mean + half]
    return {
        "mean": mean, "std": float(r.std()), "ci95": ci, "min": float(r.min()),
        "max": float(r.max()), "returns": [float(x) for x in r],
    }  # fmt: skip


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
        try:
            out = []
            for s in seeds:
                out.append(play_real(policy, env, s))
                if progress is not None:
                    progress(1)
            return np.array(out)
        finally:
            env.close()
    check_picklable(policy)
    out = np.zeros(episodes)
    with GamePool(workers, _init_worker, (policy, dream_id, real_kwargs)) as pool:
        futures = {pool.submit(_worker_episode, s): i for i, s in enumerate(seeds)}
        pending = set(futures)
        while pending:
            done, pending = pool.wait_first(pending)
            for fut in done:
                out[futures[fut]] = fut.result()
                if progress is not None:
                    progress(1)
    return out


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
    spec = game_of(dream_id)
    mode = obs_mode_of(agent)
    if obs_mode is not None and check_choice("obs_mode", obs_mode, OBS_MODES) != mode:
        raise ValueError(f"obs_mode: {agent} observes {mode}, not {obs_mode}")
    wm = load_world_model(spec, world_model, "cpu")
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
    V and M run on the CPU). The report is described in the module's docstring.
    """
    spec = game_of(dream_id)
    episodes = check_positive_int("episodes", episodes)
    wm = load_world_model(spec, world_model, device)
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


def transfer_report(meta: dict, dream: dict, real: dict) -> dict[str, Any]:
    """The transfer report: ``meta`` (game, agent, ...), the two parts, and their ratio."""
    for part in (dream, real):
        part["wall_seconds"] = round(part["wall_seconds"], 3)
    ratio = dream["mean"] / real["mean"] if real["mean"] else None
    return {
        "mode": "transfer", **meta, "dream": dream, "real": real, "dream_real_ratio": ratio,
        "dreamgym_version": __version__,
    }  # fmt: skip


def _name(world_model, spec) -> str | None:
    """How a report names the world model: its folder (None for one given as an object)."""
    if world_model is None:
        from dreamgym.shipped import shipped_dir

        return str(shipped_dir(spec))
    return str(world_model) if isinstance(world_model, (str, os.PathLike)) else None


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a report as JSON (atomically, its folder created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return path


def read_report(report: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A transfer report (the dict, or its JSON file); a ValueError for any other file."""
    if not isinstance(report, dict):
        try:
            report = json.loads(Path(report).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{report}: not a JSON report ({e})") from None
    if not isinstance(report, dict) or report.get("mode") != "transfer":
        raise ValueError(f"{report if not isinstance(report, dict) else 'report'}: not a "
                         "transfer report (dreamgym evaluate --agent writes them)")  # fmt: skip
    return report


def _interval(part: dict[str, Any]) -> str:
    ci = part.get("ci95")
    text = f"{part['mean']:.1f} ± {part['std']:.1f}"
    return text + (f"  (95% CI {ci[0]:.1f} to {ci[1]:.1f})" if ci else "")


def format_transfer(report: dict[str, Any] | str | os.PathLike) -> str:
    """A printable table of a transfer report (the dict, or its JSON file)."""
    r = read_report(report)
    ratio = r.get("dream_real_ratio")
    rows = [
        ("game", r["game"]),
        ("agent", f"{r['agent']} ({r['kind']}{', ' + r['algo'] if r.get('algo') else ''})"),
        ("observes", r["obs_mode"] + (f", real frames {r['pixels']}" if r.get("pixels") else "")),
        ("episodes", f"{r['episodes']} dreams, {r['episodes']} real"),
        (f"dream, tau {r['dream']['tau']:g}", _interval(r["dream"])),
        ("real game", _interval(r["real"])),
        ("dream / real", "-" if ratio is None else f"{ratio:.2f}"),
        ("wall time", f"{r['dream']['wall_seconds'] + r['real']['wall_seconds']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plot_transfer(reports, path: str | os.PathLike) -> Path:
    """Draw dream and real scores (means, 95% CI bars) of transfer reports side by side.

    ``reports``: dicts or JSON files. Writes an image (its format from ``path``'s
    suffix, e.g. ``.png``, ``.svg``); needs matplotlib (the ``viz`` extra).
    """
    from dreamgym._deps import require

    require("matplotlib", "viz")
    from matplotlib.figure import Figure

    rows = [read_report(r) for r in reports]
    if not rows:
        raise ValueError("reports: expected at least one transfer report to plot")
    fig = Figure(figsize=(max(4.0, 1.6 * len(rows) + 1.5), 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    for k, (part, colour) in enumerate((("dream", "tab:purple"), ("real", "tab:green"))):
        means = np.array([r[part]["mean"] for r in rows])
        cis = [r[part].get("ci95") or [m, m] for r, m in zip(rows, means, strict=True)]
        err = np.abs(np.array(cis).T - means)
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=err, capsize=3, color=colour, label=part)
    ax.set_xticks(x, [Path(r["agent"]).name or r["agent"] for r in rows], rotation=15)
    ax.set_ylabel("mean return (95% CI)")
    ax.set_title(", ".join(sorted({r["game"] for r in rows})))
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


__all__ = [
    "score_transfer", "load_agent_for", "score_dreams", "score_real", "play_real", "summary",
    "t_quantile", "transfer_report", "check_picklable",
    "write_report", "read_report", "format_transfer", "plot_transfer",
]  # fmt: skip
