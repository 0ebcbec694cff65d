"""WorldModel = V + M (or an ensemble of Ms) + GameSpec + the bank of real first-frame
encodings (+ real states).

A folder holds ``config.json`` (architecture, game, dreamgym version, ensemble size)
and ``weights.safetensors``. Loading never unpickles; every failure names the file
and, for weights, the key that does not match. A folder of one M (``mdnrnn.*`` keys)
is an ensemble of one; the other members of an ensemble are ``members.<k>.*``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dreamgym._io import atomic_path
from dreamgym._version import __version__
from dreamgym.envs import game_from_config, game_record
from dreamgym.games import GameSpec, get_game
from dreamgym.mdnrnn import MDNRNN, LSTMState, MDNRNNConfig
from dreamgym.starts import MEMBER_KEY, RealStarts
from dreamgym.vae import ConvVAE, VAEConfig

STARTS_PREFIX = "starts."
"""Keys of the optional bank of real mid-episode states in ``weights.safetensors``."""
MEMBER_PREFIX = "members."
"""Keys of the ensemble's members 1, 2, ... (member 0 is ``mdnrnn.``)."""
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT = 1


class WorldModelError(ValueError):
    """A world-model folder is missing, truncated, from another game or of the wrong shape."""


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata=None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata)


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise WorldModelError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorldModelError(f"{path}: not valid JSON ({e})") from None


def read_tensors(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WorldModelError(f"{path}: file not found")
    try:
        tensors = load_file(path, device=str(device))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise WorldModelError(f"{path}: not a readable safetensors file ({e})") from None
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise WorldModelError(
                f"{path}: key {key!r} holds NaN or infinite values (training diverged); "
                "train it again"
            )
    return tensors


def vae_digest(folder: str | os.PathLike) -> str:
    """sha256 of the V in a world-model folder (its tensors' names, dtypes, shapes, bytes).

    It names V alone: a new M or bank of starts written into the folder keeps it.
    """
    path = Path(folder) / WEIGHTS_FILE
    tensors = read_tensors(path)
    h = hashlib.sha256()
    for key in sorted(k for k in tensors if k.startswith("vae.")):
        t = tensors[key].contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return "vae:" + h.hexdigest()


def load_state(module: torch.nn.Module, tensors: dict, prefix: str, path: Path) -> None:
    """Copy ``prefix``-ed tensors into ``module``, naming any key that is missing or misshapen."""
    own = module.state_dict()
    for key, param in own.items():
        full = prefix + key
        if full not in tensors:
            raise WorldModelError(f"{path}: missing key {full!r}")
        if tensors[full].shape != param.shape:
            raise WorldModelError(
                f"{path}: key {full!r} has shape {tuple(tensors[full].shape)}, "
                f"expected {tuple(param.shape)} from the config"
            )
    extra = [k for k in tensors if k.startswith(prefix) and k[len(prefix) :] not in own]
    if extra:
        raise WorldModelError(f"{path}: unexpected key {extra[0]!r}")
    module.load_state_dict({k: tensors[prefix + k] for k in own})


@dataclass
class WorldModel:
    """The trained world of one game, ready to dream in."""

    game: GameSpec
    vae: ConvVAE
    mdnrnn: MDNRNN
    z0_mu: torch.Tensor
    """(N, Z) posterior means of real first frames: dream episodes start from these."""
    z0_logvar: torch.Tensor
    """(N, Z) posterior log-variances of the same frames."""
    starts: RealStarts | None = None
    """Optional bank of real states along recorded episodes (``starts="real"`` dreams)."""
    ensemble: list[MDNRNN] = field(default_factory=list)
    """The other Ms of an ensemble sharing V (members 1, 2, ...). ``mdnrnn`` is member
    0, the M whose state the controller reads, in dreams as in the real game."""

    def __post_init__(self):
        self.game = get_game(self.game)
        N, Z = self.z0_mu.shape
        assert self.z0_logvar.shape == (N, Z), "z0_mu and z0_logvar must both be (N, Z)"
        assert Z == self.vae.z_dim == self.mdnrnn.config.z_dim, "V and M disagree on z_dim"
        self.ensemble = list(self.ensemble)
        for k, m in enumerate(self.ensemble, 1):
            if m.config != self.mdnrnn.config:
                raise WorldModelError(
                    f"ensemble: member {k} has config {m.config.to_dict()}, member 0 has "
                    f"{self.mdnrnn.config.to_dict()}; every member must have the same sizes"
                )
        self.vae.eval()
        for m in self.members:
            m.eval()

    @property
    def members(self) -> list[MDNRNN]:
        """Every M of the world model, member 0 first (a list of one without an ensemble)."""
        return [self.mdnrnn, *self.ensemble]

    @property
    def dropout(self) -> float:
        """The dropout rate M was trained with, the rate its dreams use by default."""
        return self.mdnrnn.config.dropout

    @classmethod
    def create(cls, game: str | GameSpec, n_bank: int = 1, **mdn_overrides) -> WorldModel:
        """An untrained world model with the game's sizes (for tests and as a starting point)."""
        spec = get_game(game)
        mdn = MDNRNNConfig(
            z_dim=spec.z_dim,
            action_dim=spec.action_dim,
            hidden=spec.hidden,
            reward_head=spec.models_reward,
        )
        mdn = MDNRNNConfig(**{**mdn.to_dict(), **mdn_overrides})
        zeros = torch.zeros(n_bank, mdn.z_dim)
        return cls(spec, ConvVAE(z_dim=mdn.z_dim), MDNRNN(mdn), zeros, zeros.clone())

    @property
    def device(self) -> torch.device:
        return self.z0_mu.device

    def to(self, device) -> WorldModel:
        """Move V, every M, the first-frame bank and the bank of real starts to ``device``
        (in place; returns the world model)."""
        self.vae.to(device)
        for m in self.members:
            m.to(device)
        self.z0_mu = self.z0_mu.to(device)
        self.z0_logvar = self.z0_logvar.to(device)
        if self.starts is not None:
            self.starts = self.starts.to(device)
        return self

    def config(self) -> dict:
        return {
            "format": FORMAT,
            "dreamgym_version": __version__,
            **game_record(self.game),
            "vae": self.vae.config.to_dict(),
            "mdnrnn": self.mdnrnn.config.to_dict(),
            "members": len(self.members),
            "z0_bank_size": int(self.z0_mu.shape[0]),
            "starts_bank_size": len(self.starts) if self.starts is not None else 0,
        }

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
        tensors |= {f"mdnrnn.{k}": v for k, v in self.mdnrnn.state_dict().items()}
        for i, m in enumerate(self.ensemble, 1):
            tensors |= {f"{MEMBER_PREFIX}{i}.{k}": v for k, v in m.state_dict().items()}
        tensors |= {"z0.mu": self.z0_mu, "z0.logvar": self.z0_logvar}
        if self.starts is not None:
            tensors |= self.starts.tensors(STARTS_PREFIX)
        atomic_save_tensors(tensors, folder / WEIGHTS_FILE, {"game": self.game.name})
        atomic_write_text(folder / CONFIG_FILE, json.dumps(self.config(), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, game: str | None = None, device="cpu") -> WorldModel:
        """Rebuild V and M from ``config.json`` and fill them from ``weights.safetensors``.

        ``game`` (optional) must match the folder's game.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise WorldModelError(f"{folder}: world-model folder not found")
        cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        cfg = read_json(cfg_path)
        for key in ("format", "game", "vae", "mdnrnn"):
            if key not in cfg:
                raise WorldModelError(f"{cfg_path}: missing key {key!r}")
        if cfg["format"] != FORMAT:
            raise WorldModelError(f"{cfg_path}: format {cfg['format']} is not {FORMAT}")
        try:
            spec = game_from_config(cfg, str(cfg_path))
        except ValueError as e:
            raise WorldModelError(str(e)) from None
        if game is not None and cfg["game"] != get_game(game).name:
            raise WorldModelError(
                f"{cfg_path}: key 'game' is {cfg['game']!r}, expected {get_game(game).name!r}"
            )
        members = cfg.get("members", 1)
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise WorldModelError(f"{cfg_path}: key 'members' must be an integer >= 1")
        try:
            vae = ConvVAE(VAEConfig(**cfg["vae"]))
            mdns = [MDNRNN(MDNRNNConfig(**cfg["mdnrnn"])) for _ in range(members)]
        except (TypeError, ValueError) as e:
            raise WorldModelError(f"{cfg_path}: bad architecture config ({e})") from None
        mdn = mdns[0]
        got = (mdn.config.action_dim, mdn.config.z_dim, mdn.config.reward_head)
        if got != (spec.action_dim, vae.z_dim, spec.models_reward):
            raise WorldModelError(
                f"{cfg_path}: key 'mdnrnn' has (action_dim, z_dim, reward_head) {got}; "
                f"{spec.name} with this V needs {(spec.action_dim, vae.z_dim, spec.models_reward)}"
            )
        # float32 throughout, whatever a file stores (a float64 bank would meet M's
        # float32 weights in the first dream step)
        tensors = {k: v.float() if v.is_floating_point() else v
                   for k, v in read_tensors(w_path).items()}  # fmt: skip
        load_state(vae, tensors, "vae.", w_path)
        load_state(mdn, tensors, "mdnrnn.", w_path)
        for i, m in enumerate(mdns[1:], 1):
            load_state(m, tensors, f"{MEMBER_PREFIX}{i}.", w_path)
        for key in ("z0.mu", "z0.logvar"):
            if key not in tensors:
                raise WorldModelError(f"{w_path}: missing key {key!r}")
            if tensors[key].ndim != 2 or tensors[key].shape[1] != vae.z_dim:
                raise WorldModelError(
                    f"{w_path}: key {key!r} has shape {tuple(tensors[key].shape)}, "
                    f"expected (N, {vae.z_dim})"
                )
        starts = _load_starts(tensors, vae.z_dim, mdn.config.hidden, w_path, members)
        wm = cls(spec, vae, mdn, tensors["z0.mu"], tensors["z0.logvar"], starts, mdns[1:])
        return wm.to(device)


def _load_starts(
    tensors: dict, z_dim: int, hidden: int, path: Path, members: int = 1
) -> RealStarts | None:
    """The bank of real states, if the file has one (folders from before it have not):
    member 0's states, and every other member's if it holds any (banks written before
    ensembles had them hold member 0's alone)."""
    widths = {"mu": z_dim, "logvar": z_dim, "h": hidden, "c": hidden}
    found = {k: tensors.get(STARTS_PREFIX + k) for k in widths}
    if all(v is None for v in found.values()):
        return None
    rows = next(v for v in found.values() if v is not None).shape[0]
    for k, width in widths.items():
        v = found[k]
        if v is None:
            raise WorldModelError(f"{path}: missing key {STARTS_PREFIX + k!r}")
        if v.shape != (rows, width):
            raise WorldModelError(
                f"{path}: key {STARTS_PREFIX + k!r} has shape {tuple(v.shape)}, "
                f"expected ({rows}, {width})"
            )
    keys = [f"{STARTS_PREFIX}{MEMBER_KEY}{k}.{x}" for k in range(1, members) for x in "hc"]
    extra = sorted(k for k in tensors if k.startswith(STARTS_PREFIX + MEMBER_KEY) and k not in keys)
    if extra:
        raise WorldModelError(f"{path}: key {extra[0]!r} names no member of this world model")
    held = [k for k in keys if k in tensors]
    if held and len(held) < len(keys):
        missing = next(k for k in keys if k not in tensors)
        raise WorldModelError(f"{path}: missing key {missing!r}")
    for k in held:
        if (shape := tuple(tensors[k].shape)) != (rows, hidden):
            raise WorldModelError(
                f"{path}: key {k!r} has shape {shape}, expected ({rows}, {hidden})"
            )
    others = [LSTMState(tensors[h], tensors[c]) for h, c in zip(held[::2], held[1::2], strict=True)]
    return RealStarts(found["mu"], found["logvar"], LSTMState(found["h"], found["c"]), others)


__all__ = ["WorldModel", "WorldModelError", "vae_digest"]
