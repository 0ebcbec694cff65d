"""dreamgym: trained world models as ordinary Gymnasium environments."""

from dreamgym._version import __version__
from dreamgym.controller import ControllerConfig, LinearController
from dreamgym.games import GAMES, GameSpec, get_game, make_game
from dreamgym.mdnrnn import MDNRNN, MDNRNNConfig
from dreamgym.vae import ConvVAE, VAEConfig
from dreamgym.world_model import WorldModel, WorldModelError

__all__ = [
    "__version__", "ConvVAE", "VAEConfig", "MDNRNN", "MDNRNNConfig", "LinearController",
    "ControllerConfig", "WorldModel", "WorldModelError", "GameSpec", "GAMES", "get_game",
    "make_game",
]  # fmt: skip
