"""Trained controllers on disk, and the policy you get back from them.

A controller folder holds ``controller.safetensors`` (the output layer's ``weight``
and, where the game uses one, ``bias``; with a hidden layer also ``hidden_weight``
and ``hidden_bias``) and ``controller.json``
(game, sizes, the temperature and generation it was trained at, the dreamgym
version, and whatever the trainer recorded). Loading never unpickles.

    policy = dreamgym.load_controller("doom_take_cover")   # the shipped controller
    action = policy(obs)            # obs (D,) -> action (A,);  obs (B, D) -> (B, A)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dreamgym._io import atomic_path
from dreamgym._version import __version__
from dreamgym.controller import Controller, ControllerConfig, unflatten
from dreamgym.envs import game_from_config, game_record
from dreamgym.games import ENV_IDS, GAMES, GameSpec, get_game
from dreamgym.world_model import WorldModel, atomic_write_text, read_json, read_tensors

WEIGHTS_FILE = "controller.safetensors"
CONFIG_FILE = "controller.json"
FORMAT = 1


class ControllerError(ValueError):
    """A controller folder is missing, truncated, or does not match its config."""


def controller_config(wm: WorldModel, hidden: int = 0, outputs: int = 0) -> ControllerConfig:
    """The controller that reads the observations of ``wm``'s dream ([z, h] or [z, c, h]),
    with ``hidden`` tanh units between input and output (0: the paper's linear C) and
    ``outputs`` tanh outputs (0: the paper's; CarRacing also takes 2, steer and pedal)."""
    spec, mdn = wm.game, wm.mdnrnn.config
    in_dim = mdn.z_dim + mdn.hidden * (2 if spec.controller_reads_cell else 1)
    return ControllerConfig(in_dim, controller_outputs(spec, outputs), spec.controller_bias, hidden)


def check_reads(controller: Controller, wm: WorldModel, name: str, folder) -> None:
    """Refuse ``controller`` (from ``folder``, given as option ``name``) in one line unless
    it reads the observations of ``wm``'s dream."""
    want = controller_config(wm).in_dim
    if controller.config.in_dim != want:
        raise ControllerError(
            f"{name}: {folder} reads {controller.config.in_dim} inputs, but this world model's "
            f"observations have {want}; it was trained in another world model"
        )


def controller_outputs(spec: GameSpec, outputs: int) -> int:
    """``outputs`` checked against the game (0: the paper's number)."""
    if outputs == 0:
        return spec.controller_outputs[0]
    if outputs not in spec.controller_outputs:
        options = " or ".join(map(str, spec.controller_outputs))
        raise ControllerError(
            f"outputs: {spec.name} controllers have {options} outputs, got {outputs!r}"
        )
    return outputs


def _config_from_params(spec: GameSpec, n: int, hidden: int, outputs: int) -> ControllerConfig:
    out, bias = controller_outputs(spec, outputs), spec.controller_bias
    if hidden:  # n = hidden * (in + bias) + out * (hidden + bias)
        in_dim = (n - out * (hidden + bias)) // hidden - int(bias)
    else:
        in_dim = n // out - int(bias)
    cfg = ControllerConfig(in_dim, out, bias, hidden)
    if in_dim < 1 or cfg.num_params != n:
        raise ControllerError(
            f"controller_params: {n} values do not make a {spec.name} controller "
            f"({hidden} hidden units, {out} outputs{' with bias' if bias else ', no bias'})"
        )
    return cfg


def save_controller(
    folder: str | os.PathLike,
    controller_params,
    game: str | GameSpec,
    meta: dict | None = None,
    hidden: int = 0,
    outputs: int = 0,
) -> Path:
    """Write ``controller_params`` (flat: layer by layer, W row-major, then b) as a
    controller folder; ``hidden``: units of its hidden layer (0: none); ``outputs``: its
    number of outputs (0: the paper's for the game).

    ``meta`` (JSON-serialisable) is stored in ``controller.json``; trainers record
    ``tau``, ``generations`` and scores there. Each file is written atomically.
    """
    spec = get_game(game)
    params = torch.as_tensor(np.asarray(controller_params, np.float32)).reshape(-1)
    if not torch.isfinite(params).all():
        raise ControllerError("controller_params: contains NaN or infinite values")
    if not (isinstance(hidden, int) and hidden >= 0):
        raise ControllerError(f"hidden: expected an integer >= 0, got {hidden!r}")
    cfg = _config_from_params(spec, params.numel(), hidden, outputs)
    tensors = {k: v.contiguous() for k, v in unflatten(cfg, params).items()}
    info = {
        "format": FORMAT,
        **game_record(spec),
        "in_dim": cfg.in_dim,
        "out_dim": cfg.out_dim,
        "bias": cfg.bias,
        "hidden": cfg.hidden,
        "num_params": cfg.num_params,
        "dreamgym_version": __version__,
        **(meta or {}),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, tmp, {"game": spec.name})
    atomic_write_text(folder / CONFIG_FILE, json.dumps(info, indent=2) + "\n")
    return folder


def read_controller(folder: str | os.PathLike, game: str | None = None) -> tuple[Controller, dict]:
    """The controller in ``folder`` and its ``controller.json``; errors name the file.

    A ``controller.json`` without ``hidden`` means no hidden layer.

    With ``game``, a controller of another game is an error too.
    """
    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    try:
        info = read_json(cfg_path)
    except ValueError as e:
        raise ControllerError(str(e)) from None
    for key in ("format", "game", "in_dim", "out_dim", "bias"):
        if key not in info:
            raise ControllerError(f"{cfg_path}: missing key {key!r}")
    if info["format"] != FORMAT:
        raise ControllerError(f"{cfg_path}: format {info['format']} is not {FORMAT}")
    try:
        game_from_config(info, str(cfg_path))
    except ValueError as e:
        raise ControllerError(str(e)) from None
    if game is not None and info["game"] != game:
        raise ControllerError(f"{folder} holds a {info['game']} controller, not a {game} one")
    hidden = info.get("hidden", 0)
    if not (isinstance(hidden, int) and hidden >= 0):
        raise ControllerError(f"{cfg_path}: key 'hidden' is {hidden!r}, expected an integer >= 0")
    for key in ("in_dim", "out_dim"):
        if not (isinstance(info[key], int) and not isinstance(info[key], bool) and info[key] >= 1):
            raise ControllerError(
                f"{cfg_path}: key {key!r} is {info[key]!r}, expected an integer >= 1"
            )
    if not isinstance(info["bias"], bool):
        raise ControllerError(f"{cfg_path}: key 'bias' is {info['bias']!r}, expected true or false")
    cfg = ControllerConfig(info["in_dim"], info["out_dim"], info["bias"], hidden)
    outputs = get_game(info["game"]).controller_outputs
    if cfg.out_dim not in outputs:
        raise ControllerError(
            f"{cfg_path}: key 'out_dim' is {cfg.out_dim}, but {info['game']} controllers have "
            f"{' or '.join(map(str, outputs))} outputs"
        )
    try:
        tensors = read_tensors(w_path)
    except ValueError as e:
        raise ControllerError(str(e)) from None
    expected = cfg.shapes()
    for key, shape in expected.items():
        if key not in tensors:
            raise ControllerError(f"{w_path}: missing key {key!r}")
        if tuple(tensors[key].shape) != shape:
            raise ControllerError(
                f"{w_path}: key {key!r} has shape {tuple(tensors[key].shape)}, "
                f"expected {shape} from {CONFIG_FILE}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ControllerError(f"{w_path}: unexpected key {extra[0]!r}")
    controller = Controller(cfg)
    controller.load_state_dict({k: v.float() for k, v in tensors.items()})
    controller.eval()
    return controller, info


class ControllerPolicy:
    """A trained controller as a function from observations to env actions.

    ``policy(obs)``: obs (D,) -> action (A,), or (B, D) -> (B, A), float32 numpy,
    where D is the dream's observation size ([z, h] or [z, c, h]); for a discrete game,
    the action's index: (D,) -> () or (B, D) -> (B,), int64 (the argmax of C's outputs).
    """

    def __init__(self, controller: Controller, game: str | GameSpec, info: dict):
        self.controller = controller
        self.game = get_game(game)
        self.info = info

    @property
    def obs_dim(self) -> int:
        return self.controller.config.in_dim

    @property
    def params(self) -> np.ndarray:
        """The flat parameter vector (what CMA-ES optimised)."""
        return self.controller.get_flat().numpy()

    def __call__(self, obs) -> np.ndarray:
        action = self.game.controller_to_action(torch.from_numpy(self.outputs(obs)))
        return self.game.env_action(action).numpy()

    @torch.no_grad()
    def outputs(self, obs) -> np.ndarray:
        """The controller's tanh outputs for ``obs``, before they are mapped to actions:
        (D,) -> (out_dim,) or (B, D) -> (B, out_dim), float32 numpy."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_dim:
            raise ValueError(
                f"obs: expected shape ({self.obs_dim},) or (B, {self.obs_dim}), "
                f"got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError("obs: contains NaN or infinite values")
        return self.controller(x).numpy()

    def __repr__(self) -> str:
        return (
            f"ControllerPolicy(game={self.game.name!r}, obs_dim={self.obs_dim}, "
            f"tau={self.info.get('tau')}, generations={self.info.get('generations')})"
        )


def _game_from_name(name: str) -> GameSpec | None:
    """The game of a game name or of any registered dream id (aliases included)."""
    if name in GAMES:
        return GAMES[name]
    return GAMES[ENV_IDS[name]] if name in ENV_IDS else None


def _registered_folder(dream_id: str) -> Path | None:
    """The world-model folder ``dreamgym.register`` gave ``dream_id``, if it gave one."""
    import gymnasium as gym

    if dream_id not in gym.registry:
        return None
    folder = gym.spec(dream_id).kwargs.get("world_model")
    return Path(folder) if isinstance(folder, str | os.PathLike) else None


def load_controller(path_or_game: str | os.PathLike) -> ControllerPolicy:
    """A policy from a controller folder (or its ``controller.json``), or a game's shipped one.

    A game name (``doom_take_cover``) or dream id means the controller shipped in
    ``models/<game>/``, or, for a dream id ``dreamgym.register`` made, the one in its folder.
    """
    path = Path(path_or_game)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    if not path.exists():
        spec = _game_from_name(str(path_or_game))
        if spec is None:
            raise ControllerError(
                f"{path_or_game}: no such controller folder, and not a game name or dream id "
                f"(expected one of {sorted(GAMES)} or a DreamX-v0 id)"
            )
        from dreamgym.shipped import shipped_dir

        path = _registered_folder(str(path_or_game)) or shipped_dir(spec)
        if not (path / CONFIG_FILE).is_file():
            raise ControllerError(
                f"no controller ships for {spec.name} yet ({path / CONFIG_FILE} is missing). "
                f"Train one in the dream with `dreamgym evolve RUN_DIR --tau 1.15` (it prints "
                f"the folder it wrote) and copy it in with `dreamgym export RUN_DIR "
                f"models/{spec.name} --controller FOLDER`, or pass a controller folder."
            )
    if not path.is_dir():
        raise ControllerError(f"{path}: expected a controller folder holding {CONFIG_FILE}")
    controller, info = read_controller(path)
    return ControllerPolicy(controller, info["game"], info)


__all__ = [
    "save_controller", "read_controller", "load_controller", "ControllerPolicy",
    "ControllerError", "controller_config",
]  # fmt: skip
