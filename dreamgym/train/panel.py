"""A fixed panel of policies, weak to strong, scored in a dream and in the real game.

A dream is honest when it ranks policies as the real game does and pays them what
the real game pays. A panel folder (``benchmarks/panel/<game>/``) holds
``panel.json``, which lists its entries in order::

    {"game": "doom_take_cover",
     "entries": [{"name": "random", "policy": "random", "max_hold": 10},
                 {"name": "left", "policy": "constant", "action": [-1.0]},
                 {"name": "shipped", "note": "models/doom_take_cover's C"}]}

An entry with a ``policy`` needs no weights (``FixedPolicy``); any other names a
controller folder ``<panel>/<name>/`` whose ``controller.json`` records the world
model it was trained with, ``"world_model": {"path": ..., "vae_digest": ...}``
(``add_controller`` writes it; the path is relative to the repository root). A
folder that arrives without the record may name its world model in its panel
entry instead. That world model's V and M are the controller's eyes, in the
real game and in any other world model's dream (see ``cross_dream``).

Real scores take long and do not depend on the dream under test, so they are
cached in ``<panel>/real_scores.json``, keyed by what plays (the controller's
weights and its world model's, or the fixed policy), the first game seed, the
number of episodes and the episode limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dreamgym.games import GameSpec, get_game
from dreamgym.policy import CONFIG_FILE, WEIGHTS_FILE, read_controller
from dreamgym.train.cross_dream import ControllerActor, FixedPolicy
from dreamgym.world_model import CONFIG_FILE as WM_CONFIG
from dreamgym.world_model import WEIGHTS_FILE as WM_WEIGHTS
from dreamgym.world_model import WorldModel, atomic_write_text, read_json, vae_digest

PANEL_FILE = "panel.json"
REAL_SCORES_FILE = "real_scores.json"


# ---------------------------------------------------------------- rank correlation


def rankdata(x) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given the mean of the ranks they span."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's correlation of the (tie-averaged) ranks.

    NaN when fewer than two values or when either side is constant.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x, y: expected two 1-D arrays of one length, got {x.shape}, {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x) - (len(x) + 1) / 2, rankdata(y) - (len(y) + 1) / 2
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


# ---------------------------------------------------------------- the panel


@dataclass
class PanelEntry:
    """One policy of a panel: a fixed ``policy``, or a controller ``folder`` with its world
    model ``world_model`` (and the V digest recorded for it, when there is one)."""

    name: str
    policy: FixedPolicy | None = None
    folder: Path | None = None
    world_model: Path | None = None
    vae_digest: str | None = None
    note: str = ""
    _own: WorldModel | None = field(default=None, repr=False)

    def own_world_model(self, device="cpu") -> WorldModel:
        """The controller's world model, checked against the V digest recorded for it."""
        if self._own is None:
            if self.vae_digest is not None and vae_digest(self.world_model) != self.vae_digest:
                raise ValueError(
                    f"{self.folder}: trained with the world model in {self.world_model}, whose V "
                    f"was {self.vae_digest}; that folder now holds another V. Restore that "
                    "world model there (or record where it lives) to score this controller"
                )
            self._own = WorldModel.load(self.world_model, device=device)
        return self._own

    def actor(self, device="cpu") -> ControllerActor | FixedPolicy:
        if self.policy is not None:
            return self.policy
        controller, _ = read_controller(self.folder)
        return ControllerActor(
            controller.get_flat(), controller.config, self.own_world_model(device)
        )


def add_controller(
    panel_dir: str | os.PathLike, name: str, controller_dir, world_model_dir, root, **meta
) -> Path:
    """Copy a controller folder into the panel as ``<panel>/<name>/``, recording in its
    ``controller.json`` the world model it was trained with (path relative to ``root``)
    and ``meta`` (say, how it was made). The panel's ``panel.json`` is left to edit."""
    dest = Path(panel_dir) / name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(controller_dir) / WEIGHTS_FILE, dest / WEIGHTS_FILE)
    info = read_json(Path(controller_dir) / CONFIG_FILE)
    wm = Path(world_model_dir).resolve()
    info["world_model"] = {
        "path": os.path.relpath(wm, Path(root).resolve()),
        "vae_digest": vae_digest(wm),
    }
    atomic_write_text(dest / CONFIG_FILE, json.dumps({**info, **meta}, indent=2) + "\n")
    read_controller(dest)  # the copy loads
    return dest


def load_panel(panel_dir: str | os.PathLike, root) -> tuple[GameSpec, list[PanelEntry]]:
    """The game and entries of ``<panel_dir>/panel.json``, in order; world-model paths are
    relative to ``root`` (the repository)."""
    panel_dir, root = Path(panel_dir), Path(root)
    cfg = read_json(panel_dir / PANEL_FILE)
    spec = get_game(cfg["game"])
    entries, names = [], set()
    for raw in cfg["entries"]:
        name = raw["name"]
        if name in names:
            raise ValueError(f"{panel_dir / PANEL_FILE}: entry {name!r} is listed twice")
        names.add(name)
        note = raw.get("note", "")
        if "policy" in raw:
            policy = FixedPolicy(
                raw["policy"], tuple(raw.get("action", ())), raw.get("max_hold", 10)
            )
            policy.actor(spec, 1, np.random.default_rng(0))  # checks the action now
            entries.append(PanelEntry(name, policy=policy, note=note))
            continue
        folder = panel_dir / name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{panel_dir / PANEL_FILE}: entry {name!r} has no 'policy' and no folder {folder}"
            )
        _, info = read_controller(folder, game=spec.name)
        record = info.get("world_model") or raw.get("world_model")
        if record is None:
            raise ValueError(
                f"{folder}: {CONFIG_FILE} records no world model and the panel entry names "
                'none; add_controller records it (or add "world_model" to the entry)'
            )
        if isinstance(record, str):
            record = {"path": record}
        wm = Path(record["path"])
        wm = wm if wm.is_absolute() else root / wm
        entries.append(PanelEntry(name, None, folder, wm, record.get("vae_digest"), note))
    return spec, entries


# ---------------------------------------------------------------- real scores, cached


def _file_digest(h, path: Path) -> None:
    h.update(path.name.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def content_hash(entry: PanelEntry) -> str:
    """sha256 of what plays the real game: the controller's weights and its world model's
    (config and weights), or the fixed policy's definition."""
    h = hashlib.sha256()
    if entry.policy is not None:
        h.update(json.dumps(vars(entry.policy), sort_keys=True).encode())
        return h.hexdigest()
    _file_digest(h, entry.folder / WEIGHTS_FILE)
    for name in (WM_CONFIG, WM_WEIGHTS):
        _file_digest(h, entry.world_model / name)
    return h.hexdigest()


def cache_key(content: str, seed: int, episodes: int, max_steps: int) -> str:
    """The real-score cache's key: an entry's content hash, its game seeds and step limit."""
    return f"{content[:32]}/seeds{seed}-{seed + episodes - 1}/steps{max_steps}"


class RealScores:
    """``<panel>/real_scores.json``: every real return of each entry, by ``cache_key``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.scores = read_json(self.path) if self.path.is_file() else {}

    def get(self, key: str) -> np.ndarray | None:
        hit = self.scores.get(key)
        return None if hit is None else np.asarray(hit["returns"], np.float64)

    def put(self, key: str, name: str, returns: np.ndarray) -> None:
        """Record and write at once (a killed benchmark keeps what it played), over what the
        file holds now (another run may have added to it since)."""
        r = np.asarray(returns, np.float64)
        if self.path.is_file():
            self.scores = {**read_json(self.path), **self.scores}
        self.scores[key] = {
            "name": name, "mean": round(float(r.mean()), 3), "std": round(float(r.std()), 3),
            "returns": [float(x) for x in r],
        }  # fmt: skip
        text = json.dumps(dict(sorted(self.scores.items())), indent=1) + "\n"
        atomic_write_text(self.path, text)


def import_report(
    entry: PanelEntry, spec: GameSpec, cache: RealScores, report: str | os.PathLike
) -> str:
    """Cache the returns of an ``evaluate`` report of the real game (``evaluate_real.json``)
    as ``entry``'s; return the key. Use it only for a report of this very controller and
    world model (``dreamgym evaluate`` plays the same episodes as ``real_returns``)."""
    r = read_json(Path(report))
    seeds, first = r.get("seeds", []), (r.get("seeds") or [0])[0]
    if r.get("mode") != "real" or r.get("game") != spec.name or entry.policy is not None:
        raise ValueError(f"{report}: not a real-game report of a {spec.name} controller")
    if seeds != list(range(first, first + len(seeds))) or len(r["returns"]) != len(seeds):
        raise ValueError(f"{report}: expected one return per game seed, seeds consecutive")
    if r.get("max_steps") != spec.max_episode_steps:
        raise ValueError(f"{report}: episode limit {r.get('max_steps')}, not the game's")
    key = cache_key(content_hash(entry), first, len(seeds), spec.max_episode_steps)
    cache.put(key, entry.name, np.asarray(r["returns"], np.float64))
    return key


def play_fixed(
    spec: GameSpec,
    policy: FixedPolicy,
    seeds,
    max_steps: int,
    workers: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    progress=None,
) -> np.ndarray:
    """Real returns of a fixed policy, one episode per game seed; episode i's random
    actions come from ``np.random.default_rng(seed)``, so the returns are the same
    however many ``workers`` play them (more than one: worker processes, or Ray actors
    with ``backend="ray"``, as ``RealEvaluator``'s). ``progress(k)`` is called as
    episodes end."""
    from dreamgym.pools import open_pool, play_each, run_all

    seeds = [int(s) for s in seeds]
    if workers <= 1 and backend == "local":
        env = spec.make_real(max_episode_steps=max_steps)
        play = partial(_play_fixed_episode, spec=spec, policy=policy)
        return np.array(play_each(env, play, seeds, progress))

    pool = open_pool(backend, workers, _init_fixed, (spec, max_steps), ray_address=ray_address)
    try:
        return np.array(run_all(pool, _fixed_episode, [(policy, s) for s in seeds], progress))
    finally:
        pool.close()


def _play_fixed_episode(env, seed: int, spec: GameSpec, policy: FixedPolicy) -> float:
    act = policy.actor(spec, 1, np.random.default_rng(seed))
    env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        action = spec.env_action(torch.from_numpy(act(np.zeros(1, np.int64))[0]))
        _, r, terminated, truncated, _ = env.step(action.numpy())
        total, done = total + float(r), terminated or truncated
    return total


_fixed_game = None
"""This worker's (spec, real game) for ``play_fixed``'s episodes."""


def _init_fixed(spec: GameSpec, max_steps: int) -> None:
    global _fixed_game
    torch.set_num_threads(1)
    _fixed_game = (spec, spec.make_real(max_episode_steps=max_steps))


def _fixed_episode(policy: FixedPolicy, seed: int) -> float:
    spec, env = _fixed_game
    return _play_fixed_episode(env, seed, spec, policy)


def real_returns(
    entry: PanelEntry,
    spec: GameSpec,
    cache: RealScores,
    episodes: int,
    seed: int = 0,
    workers: int = 2,
    play: bool = True,
    progress=None,
    backend: str = "local",
    ray_address: str | None = None,
) -> tuple[np.ndarray | None, bool]:
    """(returns over game seeds ``seed``.. ``seed + episodes - 1``, whether they were cached).

    Misses are played in ``workers`` processes (controllers with their own V and M) and
    cached, unless ``play`` is False: then a miss gives (None, False). ``progress(k)`` is
    called as episodes end. ``backend``, ``ray_address``: where the workers run (as
    ``RealEvaluator``'s).
    """
    from dreamgym.rollouts import RealEvaluator

    max_steps = spec.max_episode_steps
    key = cache_key(content_hash(entry), seed, episodes, max_steps)
    hit = cache.get(key)
    if hit is not None or not play:
        return hit, hit is not None
    if entry.policy is not None:
        seeds = range(seed, seed + episodes)
        where = {"backend": backend, "ray_address": ray_address, "progress": progress}
        returns = play_fixed(spec, entry.policy, seeds, max_steps, workers, **where)
    else:
        controller, _ = read_controller(entry.folder)
        where = {"backend": backend, "ray_address": ray_address}
        with RealEvaluator(entry.world_model, workers, controller=controller.config, **where) as ev:
            params = controller.get_flat().numpy()[None]
            returns = ev.returns(params, episodes, seed, progress)[0]
    cache.put(key, entry.name, returns)
    return returns, False


def seeded(seed: int, stream: int, device="cpu") -> torch.Generator:
    """A generator of one stream of a benchmark seed (0: the dreams, 1: the controller's V)."""
    s = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(s)


__all__ = [
    "spearman", "rankdata", "PanelEntry", "add_controller", "load_panel", "content_hash",
    "cache_key", "RealScores", "real_returns", "import_report", "play_fixed", "seeded",
]  # fmt: skip
