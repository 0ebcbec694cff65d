"""dreamgym: trained world models as ordinary Gymnasium environments.

Importing dreamgym registers DreamDoomTakeCover-v0 (alias DreamDoom-v0) and
DreamCarRacing-v0 with Gymnasium, and the world-model folders listed in
``DREAMGYM_MODELS``; ``dreamgym.register(folder)`` registers any other folder's
dream (``Dream<Name>-v0``), for a game described by ``dreamgym.game_spec``.
"""

from dreamgym._version import __version__
from dreamgym.controller import Controller, ControllerConfig
from dreamgym.dream import DreamEnv, DreamVectorEnv, register_envs
from dreamgym.envs import game_spec, resolve_game
from dreamgym.games import GAMES, GameSpec, get_game, make_game, register_game
from dreamgym.mdnrnn import MDNRNN, MDNRNNConfig
from dreamgym.policy import load_controller
from dreamgym.registration import register, register_from_environment
from dreamgym.shipped import shipped_dir
from dreamgym.vae import ConvVAE, VAEConfig
from dreamgym.world_model import WorldModel, WorldModelError
from dreamgym.wrappers import make_real, make_real_vec

register_envs()
register_from_environment()

__all__ = [
    "__version__", "ConvVAE", "VAEConfig", "MDNRNN", "MDNRNNConfig", "Controller",
    "ControllerConfig", "WorldModel", "WorldModelError", "GameSpec", "GAMES", "get_game",
    "make_game", "DreamEnv", "DreamVectorEnv", "make_real", "make_real_vec", "shipped_dir",
    "load_controller", "game_spec", "resolve_game", "register_game", "register",
]  # fmt: skip
