"""dreamgym: trained world models as ordinary Gymnasium environments.

Importing dreamgym registers DreamDoomTakeCover-v0 (alias DreamDoom-v0) and
DreamCarRacing-v0 with Gymnasium.
"""

from dreamgym._version import __version__
from dreamgym.controller import Controller, ControllerConfig
from dreamgym.dream import DreamEnv, DreamVectorEnv, register_envs
from dreamgym.games import GAMES, GameSpec, get_game, make_game
from dreamgym.mdnrnn import MDNRNN, MDNRNNConfig
from dreamgym.policy import load_controller
from dreamgym.shipped import shipped_dir
from dreamgym.vae import ConvVAE, VAEConfig
from dreamgym.world_model import WorldModel, WorldModelError
from dreamgym.wrappers import make_real, make_real_vec

register_envs()

__all__ = [
    "__version__", "ConvVAE", "VAEConfig", "MDNRNN", "MDNRNNConfig", "Controller",
    "ControllerConfig", "WorldModel", "WorldModelError", "GameSpec", "GAMES", "get_game",
    "make_game", "DreamEnv", "DreamVectorEnv", "make_real", "make_real_vec", "shipped_dir",
    "load_controller",
]  # fmt: skip
