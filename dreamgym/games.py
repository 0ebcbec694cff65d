"""The real games: one ``GameSpec`` per game, and the real environments behind them.

``make_game(name)`` returns a Gymnasium env whose observation is the
preprocessed 64x64x3 uint8 frame and whose action space is the one the dream
uses. Everything game-specific that the rest of dreamgym needs (sizes, episode
limit, how the controller's tanh output becomes an action, which action M sees,
what M must model) lives in the spec.

``GAMES`` holds the two shipped games and every game registered since
(``register_game``; ``dreamgym.game_spec`` derives a spec from any Gymnasium env
with pixels, and ``dreamgym.envs.resolve_game`` registers it by id or
``module:object``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from PIL import Image

from dreamgym._deps import require

FRAME_SHAPE = (64, 64, 3)


def models_root() -> Path:
    """The folder the shipped world models install to: one sub-folder per game."""
    # dreamgym.models has no __init__.py: importlib.resources would hand back a
    # MultiplexedPath, whose str() is not a path. Look for the folder directly.
    installed = Path(__file__).resolve().parent / "models"  # a regular install
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "models"  # editable install: the repo's


def resize_frame(frame: np.ndarray) -> np.ndarray:
    """Any (H, W, 3) uint8 frame -> (64, 64, 3) uint8, by area averaging."""
    return np.asarray(Image.fromarray(frame).resize((64, 64), Image.Resampling.BOX))


# ---------------------------------------------------------------- Doom TakeCover


class DoomTakeCoverEnv(gym.Env):
    """ViZDoom TakeCover as the paper played it.

    Observation: the 160x120 screen (no HUD, damage flashes on) resized to 64x64x3 uint8.
    Action: ``Box(-1, 1, (1,))``; below -1/3 moves left, above 1/3 moves right,
    otherwise the agent stays (the paper's mapping). Reward +1 per tic alive.
    Terminates on death; truncates at ``max_episode_steps`` (2100 = 60 s).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 35}

    def __init__(self, render_mode: str | None = None, max_episode_steps: int = 2100):
        vzd = require("vizdoom", "doom")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.max_episode_steps = int(max_episode_steps)
        self.observation_space = spaces.Box(0, 255, FRAME_SHAPE, np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        # ViZDoom creates ./_vizdoom/ at start; games started at once in a fresh folder
        # race to create it and the loser crashes (SIGSEGV), so it exists before they start
        os.makedirs("_vizdoom", exist_ok=True)
        game = vzd.DoomGame()
        game.load_config(os.path.join(vzd.scenarios_path, "take_cover.cfg"))
        game.set_window_visible(False)
        game.set_sound_enabled(False)
        game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_render_hud(False)
        # take_cover.cfg turns damage flashes off; on, a hit tints the frame red, so V and M
        # can see being hit instead of having to infer health from nothing.
        game.set_render_screen_flashes(True)
        game.set_mode(vzd.Mode.PLAYER)
        game.init()
        self._game = game
        self._frame = np.zeros(FRAME_SHAPE, np.uint8)
        self._raw = None
        self._t = 0

    def _observe(self) -> np.ndarray:
        state = self._game.get_state()
        if state is not None:  # None once the episode has finished: keep the last frame
            self._raw = state.screen_buffer
            self._frame = resize_frame(self._raw)
        return self._frame

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._game.set_seed(int(self.np_random.integers(2**31 - 1)))
        self._game.new_episode()
        self._t = 0
        return self._observe().copy(), {}

    def step(self, action):
        # The same float32 comparison M's input uses, so the game moves exactly when M is told.
        move = float(doom_executed_action(np.asarray(action, dtype=np.float32).reshape(-1)[:1])[0])
        reward = float(self._game.make_action([int(move < 0), int(move > 0)], 1))  # LEFT, RIGHT
        self._t += 1
        terminated = bool(self._game.is_episode_finished())
        truncated = not terminated and self._t >= self.max_episode_steps
        return self._observe().copy(), reward, terminated, truncated, {}

    def render(self):
        if self.render_mode == "rgb_array":
            return self._frame.copy() if self._raw is None else self._raw.copy()
        return None

    def close(self):
        if getattr(self, "_game", None) is not None:
            self._game.close()
            self._game = None

    def __del__(self):
        self.close()


def doom_executed_action(action):
    """The action the game executed, as M sees it: -1 (left), 0 (stay) or +1 (right).

    Works on numpy arrays and torch tensors alike.
    """
    return (action > 1 / 3) * 1.0 - (action < -1 / 3) * 1.0


# ---------------------------------------------------------------- CarRacing


class CarRacing64(gym.ObservationWrapper):
    """CarRacing-v3 with the dashboard (bottom 12 rows) cropped and the frame at 64x64."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = spaces.Box(0, 255, FRAME_SHAPE, np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return resize_frame(np.ascontiguousarray(observation[:84]))


def make_car_racing(render_mode: str | None = None, max_episode_steps: int = 1000, **kwargs):
    require("Box2D", "carracing")
    from dreamgym._car_racing import CarRacing  # same frames, road drawn ~2x faster

    spec = dataclasses.replace(gym.spec("CarRacing-v3"), entry_point=CarRacing)
    env = gym.make(spec, render_mode=render_mode, max_episode_steps=max_episode_steps, **kwargs)
    return CarRacing64(env)


def identity_action(action):
    return action


# ---------------------------------------------------------------- specs


def _doom_action(y: torch.Tensor) -> torch.Tensor:
    return y  # the tanh output is already in Box(-1, 1, (1,))


def doom_fireballs(frames: np.ndarray) -> np.ndarray:
    """(N, 64, 64, 3) uint8 frames -> (N, 64, 64) bool: TakeCover's fireball pixels.

    A fireball is a few bright yellow-white pixels; the walls, floor and monsters are
    darker, and a damage flash tints everything red without making it bright. So a
    fireball pixel has R + G >= 290, R >= 140, G >= 120 and B < R."""
    f = np.asarray(frames).astype(np.int16)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return (r + g >= 290) & (r >= 140) & (g >= 120) & (b < r)


def _car_action(y: torch.Tensor) -> torch.Tensor:
    if y.shape[-1] == 2:  # steer = a0; a1 is one pedal: gas when positive, brake when negative
        return torch.stack([y[..., 0], y[..., 1].clamp(0, 1), (-y[..., 1]).clamp(0, 1)], dim=-1)
    # the paper's three outputs: steer = a0, gas = (a1 + 1) / 2, brake = clip(a2, 0, 1)
    return torch.stack([y[..., 0], (y[..., 1] + 1) / 2, y[..., 2].clamp(0, 1)], dim=-1)


@dataclass(frozen=True)
class GameSpec:
    """One game: its real env, frame preprocessing, action mapping, and the sizes and
    limits its world model and dream use.

    For a game of your own, ``dreamgym.game_spec(env_id_or_factory, **overrides)``
    fills every field from the env (see ``dreamgym.envs``); ``replace`` changes any."""

    name: str
    """Game name used by the CLI, configs and model folders."""
    make_real: Callable[..., gym.Env]
    """Factory of the real game with 64x64x3 uint8 observations."""
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    z_dim: int
    """Latent size of V."""
    hidden: int
    """LSTM units of M."""
    max_episode_steps: int
    """Episode limit, in the real game and in the dream."""
    constant_reward: float | None
    """Reward per step where the game's reward is a constant; None: M predicts it."""
    controller_reads_cell: bool
    """The controller reads [z, c, h] (Doom) rather than [z, h] (CarRacing)."""
    controller_bias: bool
    controller_outputs: tuple[int, ...]
    """The numbers of tanh outputs ``controller_to_action`` maps; the first is the paper's."""
    controller_to_action: Callable[[torch.Tensor], torch.Tensor]
    """Maps the controller's tanh output (..., outputs) into the action space."""
    executed_action: Callable
    """Maps an env action to the action the game executed (what M consumes)."""
    dream_id: str
    """The id ``gym.make`` knows the game's dream by."""
    aliases: tuple[str, ...] = ()
    """More ids of the same dream (``DreamDoom-v0``)."""
    default_tau: float = 1.0
    """The dream temperature its ids default to."""
    render_fps: int = 30
    """Frames per second of the game's renders (gifs, ``render_mode``)."""
    run_dir: str | None = None
    """Where the shipped model's recipe keeps its run (None: ``runs/<name>``)."""
    discrete: int = 0
    """The number of actions of a ``Discrete(n)`` game (M reads the one-hot of the executed
    action, C acts by the argmax of its n outputs); 0: a continuous ``Box`` game."""
    source: str | None = None
    """How a fresh process rebuilds this spec (``dreamgym.envs.resolve_game``): a Gymnasium
    id or ``module:object``. Saved runs and folders record it beside the name; None for
    the games that ship with dreamgym. A spec with a source pickles as its source
    (``dreamgym.envs`` registers that with ``copyreg``), so worker processes rebuild
    and register it."""
    danger_pixels: Callable[[np.ndarray], np.ndarray] | None = None
    """(N, 64, 64, 3) uint8 frames -> (N, 64, 64) bool: the pixels that show what ends
    an episode (Doom's fireballs), or None. ``fit-vae --danger-weight`` weighs V's
    error there more, and ``benchmarks/dream_danger.py`` counts them."""

    def replace(self, **changes) -> GameSpec:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    @property
    def action_dim(self) -> int:
        """Width of the action M reads: the Box's size, or n (the one-hot) when discrete."""
        return self.discrete or len(self.action_low)

    @property
    def env_action_dim(self) -> int:
        """Width of an action as shards and dreamgym's tensors hold it: the Box's size, or 1
        (the action's index) when discrete."""
        return 1 if self.discrete else len(self.action_low)

    @property
    def action_space(self) -> spaces.Box | spaces.Discrete:
        if self.discrete:
            return spaces.Discrete(self.discrete)
        return spaces.Box(
            np.array(self.action_low, np.float32), np.array(self.action_high, np.float32)
        )

    def env_action(self, action: torch.Tensor) -> torch.Tensor:
        """An action tensor (..., env_action_dim) as the env takes it: (...,) int64 indices
        when discrete, unchanged otherwise."""
        return action[..., 0].long() if self.discrete else action

    @property
    def models_reward(self) -> bool:
        return self.constant_reward is None

    @property
    def obs_dim(self) -> int:
        """Size of the dream's latent observation: [z, c, h] or [z, h]."""
        return self.z_dim + self.hidden * (2 if self.controller_reads_cell else 1)


GAMES: dict[str, GameSpec] = {
    "doom_take_cover": GameSpec(
        name="doom_take_cover",
        make_real=DoomTakeCoverEnv,
        action_low=(-1.0,),
        action_high=(1.0,),
        z_dim=64,
        hidden=512,
        max_episode_steps=2100,
        constant_reward=1.0,
        controller_reads_cell=True,
        controller_bias=False,
        controller_outputs=(1,),
        controller_to_action=_doom_action,
        executed_action=doom_executed_action,
        dream_id="DreamDoomTakeCover-v0",
        aliases=("DreamDoom-v0",),
        default_tau=1.15,  # the paper's best transfer
        render_fps=35,
        run_dir="runs/doom",
        danger_pixels=doom_fireballs,
    ),
    "car_racing": GameSpec(
        name="car_racing",
        make_real=make_car_racing,
        action_low=(-1.0, 0.0, 0.0),
        action_high=(1.0, 1.0, 1.0),
        z_dim=32,
        hidden=256,
        max_episode_steps=1000,
        constant_reward=None,
        controller_reads_cell=False,
        controller_bias=True,
        controller_outputs=(3, 2),
        controller_to_action=_car_action,
        executed_action=identity_action,
        dream_id="DreamCarRacing-v0",
        default_tau=1.0,  # plain sampling
        render_fps=50,
    ),
}
"""Every game dreamgym knows, by name (``doom_take_cover``, ``car_racing``)."""


ENV_IDS: dict[str, str] = {
    env_id: spec.name for spec in GAMES.values() for env_id in (spec.dream_id, *spec.aliases)
}
"""Every registered dream id, with the name of its game."""


def get_game(name: str) -> GameSpec:
    """The spec of a game by name; a clear error lists the known names."""
    if isinstance(name, GameSpec):
        return name
    try:
        return GAMES[name]
    except KeyError:
        raise ValueError(f"game: unknown game {name!r}; expected one of {sorted(GAMES)}") from None


def register_game(spec: GameSpec) -> GameSpec:
    """Add a user's game to ``GAMES`` (and its dream id to ``ENV_IDS``); returns the spec
    registered under its name. Registering the same spec again is a no-op; another spec
    under a name or dream id already taken is an error."""
    if not isinstance(spec, GameSpec):
        raise TypeError(f"spec: expected a GameSpec, got {type(spec).__name__}")
    known = GAMES.get(spec.name)
    if known is not None:
        if known == spec or (known.source is not None and known.source == spec.source):
            return known
        raise ValueError(f"spec: a game named {spec.name!r} is already registered; pick a name")
    for env_id in (spec.dream_id, *spec.aliases):
        if env_id in ENV_IDS:
            raise ValueError(f"spec: dream id {env_id!r} already belongs to {ENV_IDS[env_id]!r}")
    GAMES[spec.name] = spec
    for env_id in (spec.dream_id, *spec.aliases):
        ENV_IDS[env_id] = spec.name
        if env_id not in gym.registry:  # gym.make needs world_model=FOLDER until register()
            register_dream_id(env_id, spec)
    return spec


def register_dream_id(env_id: str, spec: GameSpec, **kwargs) -> None:
    """Register ``env_id`` with Gymnasium as the dream of ``spec`` (``DreamEnv`` and its
    vector entry point), replacing an earlier registration; ``kwargs`` go to the env."""
    if env_id in gym.registry:
        del gym.registry[env_id]
    gym.register(
        id=env_id,
        entry_point="dreamgym.dream:DreamEnv",
        vector_entry_point="dreamgym.dream:DreamVectorEnv",
        max_episode_steps=spec.max_episode_steps,
        kwargs={"game": spec.name, "tau": spec.default_tau, **kwargs},
    )


def make_game(name: str, **kwargs) -> gym.Env:
    """The real game with 64x64x3 uint8 observations and the dream's action space."""
    return get_game(name).make_real(**kwargs)


__all__ = [
    "GameSpec",
    "GAMES",
    "ENV_IDS",
    "get_game",
    "register_game",
    "register_dream_id",
    "models_root",
    "make_game",
    "resize_frame",
    "DoomTakeCoverEnv",
]
