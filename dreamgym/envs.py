"""Your own game: any Gymnasium env with pixels as a dreamgym game.

``game_spec(env)`` derives a ``GameSpec`` from a Gymnasium id or an env factory:
frames from the observation when it is an (H, W, 3) uint8 image, else from
``render()``, resized to 64x64x3; the action space as it is (``Discrete(n)``: M
reads the one-hot of the executed action and C acts by the argmax of its n outputs;
a bounded ``Box``: C's tanh outputs scaled into it); M's reward head on unless a
``constant_reward`` is given; M's done head always; the episode limit from the
env's registration.

``resolve_game(ref)`` turns what a user types (a game name, a Gymnasium id, or
``module:object`` naming a ``GameSpec`` or a function returning one) into a
registered ``GameSpec``, and ``game_from_config`` does the same for the
``{"game", "game_source"}`` entries that run directories, world-model and
controller folders record, so every process (worker processes included) can
rebuild a user's game from its files.

    spec = dreamgym.game_spec("MiniGrid-Empty-5x5-v0")   # dreamgym collect MiniGrid-Empty-5x5-v0
    spec.action_space                                     # Discrete(7)
"""

from __future__ import annotations

import copyreg
import functools
import importlib
import json
import re
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from dreamgym.games import (
    ENV_IDS,
    FRAME_SHAPE,
    GAMES,
    GameSpec,
    models_root,
    register_game,
    resize_frame,
)

PIXELS = ("obs", "render")
"""Where a game's frames come from: its observation, or its ``render()``."""
DEFAULT_LIMIT = 1000
"""Episode limit of an env whose registration and attributes give none."""


# ---------------------------------------------------------------- frames


class PixelFrames(gym.Wrapper):
    """An env observed as its 64x64x3 uint8 frame.

    ``pixels="obs"``: the observation is an (H, W, 3) uint8 image, resized;
    ``"render"``: the frame is the env's ``render()`` (the env renders ``rgb_array``).
    Actions, rewards, termination and truncation are the env's own.
    """

    def __init__(self, env: gym.Env, pixels: str, render: bool = False):
        super().__init__(env)
        if pixels not in PIXELS:
            raise ValueError(f"pixels: expected one of {PIXELS}, got {pixels!r}")
        self.pixels = pixels
        self._render = render  # whether render() shows the frames (the caller asked rgb_array)
        self.observation_space = spaces.Box(0, 255, FRAME_SHAPE, np.uint8)

    def _frame(self, obs) -> np.ndarray:
        image = obs if self.pixels == "obs" else self.env.render()
        return resize_frame(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._frame(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._frame(obs), float(reward), bool(terminated), bool(truncated), info

    def render(self):
        return self.env.render() if self._render else None


def is_image(space: spaces.Space) -> bool:
    """Whether observations of ``space`` are (H, W, 3) uint8 images of at least 16x16."""
    return (
        isinstance(space, spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[2] == 3
        and min(space.shape[:2]) >= 16
    )


def _open(env: str | Callable[..., gym.Env], render_mode: str | None, limit, kwargs: dict):
    """The raw env of a Gymnasium id or factory, with ``render_mode`` and a step limit."""
    if isinstance(env, str):
        extra = {} if limit is None else {"max_episode_steps": limit}
        return gym.make(env, render_mode=render_mode, **extra, **kwargs)
    made = env(**({"render_mode": render_mode} if render_mode else {}), **kwargs)
    return made if limit is None else gym.wrappers.TimeLimit(made, limit)


def make_pixel_game(
    env: str | Callable[..., gym.Env],
    pixels: str,
    env_kwargs: dict,
    render_mode: str | None = None,
    max_episode_steps: int | None = None,
    **kwargs: Any,
) -> gym.Env:
    """The real game of a ``game_spec``: the env with 64x64x3 uint8 frames as observations.

    ``env``: a Gymnasium id or a factory; ``pixels``: ``obs`` or ``render``;
    ``env_kwargs`` and ``kwargs`` go to the env.
    """
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
    mode = "rgb_array" if pixels == "render" else render_mode
    raw = _open(env, mode, max_episode_steps, {**env_kwargs, **kwargs})
    return PixelFrames(raw, pixels, render=render_mode == "rgb_array")


# ---------------------------------------------------------------- actions


def argmax_action(y: torch.Tensor) -> torch.Tensor:
    """C's n outputs (..., n) -> the discrete action (..., 1), int64: their argmax."""
    return y.argmax(dim=-1, keepdim=True)


def one_hot_action(action, n: int):
    """Discrete actions (..., 1) (their index, any number type) -> one-hot (..., n) float32,
    what M reads. Works on numpy arrays and torch tensors alike."""
    if isinstance(action, torch.Tensor):
        index = action[..., 0].long().clamp(0, n - 1)
        return torch.nn.functional.one_hot(index, n).to(torch.float32)
    index = np.clip(np.asarray(action)[..., 0].astype(np.int64), 0, n - 1)
    return np.eye(n, dtype=np.float32)[index]


def scale_action(y: torch.Tensor, low: tuple, high: tuple) -> torch.Tensor:
    """C's tanh outputs (..., A) in (-1, 1) -> the Box [low, high], linearly."""
    lo = torch.tensor(low, dtype=y.dtype, device=y.device)
    hi = torch.tensor(high, dtype=y.dtype, device=y.device)
    return lo + (y + 1) * 0.5 * (hi - lo)


def identity_action(action):
    """The executed action of a continuous game: the action itself."""
    return action


def _action_fields(space: spaces.Space) -> dict:
    """The ``GameSpec`` fields of an env's action space: Discrete(n) or a bounded 1-D Box."""
    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(f"env: action space {space} starts at {space.start}; expected 0")
        n = int(space.n)
        return {
            "action_low": (0.0,), "action_high": (float(n - 1),), "discrete": n,
            "controller_outputs": (n,), "controller_to_action": argmax_action,
            "executed_action": functools.partial(one_hot_action, n=n),
        }  # fmt: skip
    if isinstance(space, spaces.Box) and len(space.shape) == 1 and space.is_bounded("both"):
        low = tuple(float(v) for v in space.low)
        high = tuple(float(v) for v in space.high)
        return {
            "action_low": low, "action_high": high, "controller_outputs": (len(low),),
            "controller_to_action": functools.partial(scale_action, low=low, high=high),
            "executed_action": identity_action,
        }  # fmt: skip
    raise ValueError(
        f"env: action space {space} is not supported; expected Discrete(n) or a bounded 1-D Box"
    )


# ---------------------------------------------------------------- specs


def _names(env: str | Callable) -> tuple[str, str]:
    """(game name, dream id) of an env: ``ALE/Pong-v5`` -> (``pong``, ``DreamPong-v0``)."""
    raw = env if isinstance(env, str) else getattr(env, "__name__", type(env).__name__)
    base = re.sub(r"-v\d+$", "", raw.split("/")[-1])
    words = [w for w in re.split(r"[^0-9A-Za-z]+", base) if w]
    camel = "".join(w[:1].upper() + w[1:] for w in words) or "Game"
    snake = "_".join(w.lower() for w in words)
    return snake or "game", f"Dream{camel}-v0"


def _episode_limit(env: gym.Env) -> int:
    """The env's episode limit: its registration's, a ``max_steps`` attribute, or 1000."""
    limit = env.spec.max_episode_steps if env.spec is not None else None
    limit = limit or getattr(env.unwrapped, "max_steps", None)
    return int(limit) if isinstance(limit, int | np.integer) and limit > 0 else DEFAULT_LIMIT


def _pixels(env: gym.Env) -> str:
    """Where ``env``'s frames come from, or a clear error when it has none."""
    if is_image(env.observation_space):
        return "obs"
    if "rgb_array" in env.metadata.get("render_modes", ()):
        return "render"
    raise ValueError(
        f"env: observations {env.observation_space} are not (H, W, 3) uint8 images and the env "
        "does not render rgb_array; dreamgym needs pixels"
    )


def game_spec(
    env: str | Callable[..., gym.Env],
    name: str | None = None,
    *,
    pixels: str | None = None,
    env_kwargs: dict | None = None,
    source: str | None = None,
    **overrides: Any,
) -> GameSpec:
    """A ``GameSpec`` for any Gymnasium env with pixels, derived from the env itself.

    ``env``: a registered Gymnasium id (``"ALE/Pong-v5"``) or a factory (an env class
    or function taking ``render_mode`` and ``env_kwargs``). ``name``: the game's name
    (default from the id: ``pong``); its dream is ``Dream<Name>-v0``. ``pixels``:
    ``obs`` or ``render`` (default: the observation when it is an (H, W, 3) uint8
    image, else ``render()``). ``overrides``: any other ``GameSpec`` field, e.g.
    ``constant_reward=1.0`` (no reward head), ``max_episode_steps``, ``z_dim``,
    ``hidden``, ``default_tau``. ``source``: how another process rebuilds this spec
    (default: the id itself; ``module:object`` for a factory, so worker processes
    and saved folders can find the game again).

    The defaults: frames resized to 64x64x3; ``Discrete(n)`` actions one-hot into M and
    the argmax of C's n outputs (a bounded ``Box``: C's tanh outputs scaled into it);
    reward head on; done head; the episode limit from the env's registration (or its
    ``max_steps``, else 1000); z 32, M 256 units, C on [z, h] with a bias.
    """
    env_kwargs = dict(env_kwargs or {})
    probe = _open(env, None, None, env_kwargs)
    try:
        pixels = pixels or _pixels(probe)
        fields = _action_fields(probe.action_space)
        limit = _episode_limit(probe)
        fps = int(probe.metadata.get("render_fps") or 30)
    finally:
        probe.close()
    auto_name, auto_id = _names(env)
    name = name or auto_name
    dream_id = overrides.pop("dream_id", None) or (
        auto_id if name == auto_name else _names(name)[1]
    )
    spec = {
        "name": name, "make_real": functools.partial(make_pixel_game, env, pixels, env_kwargs),
        "z_dim": 32, "hidden": 256, "max_episode_steps": limit, "constant_reward": None,
        "controller_reads_cell": False, "controller_bias": True, "dream_id": dream_id,
        "render_fps": fps, "source": source if source is not None else
        (env if isinstance(env, str) else None), **fields,
    }  # fmt: skip
    unknown = sorted(set(overrides) - set(GameSpec.__dataclass_fields__))
    if unknown:
        raise TypeError(f"game_spec: unknown GameSpec field {unknown[0]!r}")
    return GameSpec(**{**spec, **overrides})


def _import_object(ref: str) -> GameSpec:
    """The ``GameSpec`` that ``module:object`` names (an object, or a function returning one),
    or the game of ``module:EnvId`` (Gymnasium's form: the module registers the id)."""
    module_name, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
        if attr in gym.registry:
            return game_spec(attr, source=ref)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"game: cannot import {ref!r} ({type(e).__name__}: {e})") from None
    if not isinstance(obj, GameSpec) and callable(obj):
        obj = obj()
    if not isinstance(obj, GameSpec):
        raise ValueError(
            f"game: {ref!r} is a {type(obj).__name__}; expected a GameSpec or a function "
            "returning one (dreamgym.game_spec)"
        )
    return obj


def _id_source(env_id: str) -> str:
    """``module:EnvId`` for an id a package registers (``minigrid:MiniGrid-Empty-5x5-v0``),
    so a fresh process imports that package before it makes the env; else the id."""
    entry = gym.spec(env_id).entry_point
    top = entry.split(":")[0].split(".")[0] if isinstance(entry, str) else ""
    return f"{top}:{env_id}" if top and top != "gymnasium" else env_id


def resolve_game(ref: str | GameSpec) -> GameSpec:
    """The registered ``GameSpec`` of ``ref``: a game name (a world model that ships in
    ``models/`` names its game too), a dream id, a Gymnasium id with pixels, or
    ``module:object`` naming a ``GameSpec`` (or a function returning one). A new game is
    registered (``register_game``), so its name works everywhere from then on."""
    if isinstance(ref, GameSpec):
        return register_game(ref)
    if not isinstance(ref, str) or not ref:
        raise ValueError(
            f"game: expected a game name, a Gymnasium id or module:object, got {ref!r}"
        )
    if ref in GAMES:
        return GAMES[ref]
    if ref in ENV_IDS:  # a dream id means its game
        return GAMES[ENV_IDS[ref]]
    for spec in GAMES.values():
        if spec.source == ref:
            return spec
    shipped = models_root() / ref / "config.json"
    if "/" not in ref and shipped.is_file():  # a world model that ships, by its game's name
        cfg = json.loads(shipped.read_text())
        if isinstance(cfg.get("game_source"), str) and cfg.get("game") == ref:
            return game_from_config(cfg, str(shipped))
    if ":" in ref:
        spec = _import_object(ref)
        if spec.source is None:
            spec = spec.replace(source=ref)
        return register_game(spec)
    if ref in gym.registry:
        return register_game(game_spec(ref, source=_id_source(ref)))
    raise ValueError(
        f"game: unknown game {ref!r}; expected one of {sorted(GAMES)}, a registered Gymnasium "
        "id (import its package first, or give module:object), or module:object naming a GameSpec"
    )


def game_from_config(cfg: dict, where: str = "config") -> GameSpec:
    """The game a saved file names: its ``game``, rebuilt from its ``game_source`` when this
    process does not know it yet (a user's game, in a fresh process)."""
    name = cfg.get("game")
    if name in GAMES:
        return GAMES[name]
    source = cfg.get("game_source")
    if not isinstance(source, str):
        raise ValueError(
            f"{where}: key 'game' is {name!r}, expected one of {sorted(GAMES)} (or a "
            "'game_source' to rebuild it from)"
        )
    spec = resolve_game(source)
    if spec.name != name:
        raise ValueError(f"{where}: game_source {source!r} makes game {spec.name!r}, not {name!r}")
    return spec


def random_returns(game: str | GameSpec, episodes: int = 100, seed: int = 0) -> np.ndarray:
    """The real game's returns under the uniform random policy: episode i on game seed
    ``seed + i``, its actions drawn from the action space seeded with ``seed + i`` too;
    the baseline a controller trained in the dream must beat."""
    spec = resolve_game(game)
    env = spec.make_real(max_episode_steps=spec.max_episode_steps)
    out = np.zeros(episodes)
    try:
        for i in range(episodes):
            env.reset(seed=seed + i)
            env.action_space.seed(seed + i)
            done = False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                out[i] += reward
                done = terminated or truncated
    finally:
        env.close()
    return out


def game_record(spec: GameSpec) -> dict:
    """What saved files record of a game: its name, and its source when it has one."""
    return {"game": spec.name, **({"game_source": spec.source} if spec.source else {})}


__all__ = [
    "PixelFrames", "make_pixel_game", "game_spec", "resolve_game", "game_from_config",
    "game_record", "random_returns", "argmax_action", "one_hot_action", "scale_action", "is_image",
]  # fmt: skip


def _reduce_spec(spec: GameSpec):
    """Pickle a user's game as its source, so a worker process rebuilds and registers it."""
    if spec.source is None:
        return spec.__reduce_ex__(2)
    return (resolve_game, (spec.source,))


copyreg.pickle(GameSpec, _reduce_spec)
