"""WorldModel save/load: identical outputs after a round trip, a clear error for each bad folder."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dreamgym
from dreamgym import WorldModel, WorldModelError
from dreamgym.world_model import CONFIG_FILE, WEIGHTS_FILE

torch.set_num_threads(1)

Z, H = 8, 16  # tiny M; V keeps the paper's convolutions (its size does not depend on z much)


def tiny_world_model(game: str = "doom_take_cover", seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    wm = WorldModel.create(game, n_bank=3, z_dim=Z, hidden=H)
    wm.z0_mu.normal_()
    wm.z0_logvar.normal_()
    return wm


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[WorldModel, Path]:
    wm = tiny_world_model()
    return wm, wm.save(tmp_path_factory.mktemp("wm") / "doom")


@pytest.fixture
def folder(saved, tmp_path) -> Path:
    """A fresh copy of the saved folder, free to corrupt."""
    dst = tmp_path / "copy"
    dst.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        (dst / name).write_bytes((saved[1] / name).read_bytes())
    return dst


def edit_config(folder: Path, edit) -> None:
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    edit(cfg)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))


def outputs(wm: WorldModel) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    z = torch.randn(2, Z, generator=g)
    a = torch.rand(2, wm.game.action_dim, generator=g) * 2 - 1
    with torch.no_grad():
        mu, logvar = wm.vae.encode(x)
        state, out = wm.mdnrnn.step(wm.mdnrnn.initial_state(2), z, a)
        state, out = wm.mdnrnn.step(state, z, a)
        return [mu, logvar, wm.vae.decode(z), *state, *out.mixture, out.done_logit]


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("game", ["doom_take_cover", "car_racing"])
def test_save_load_round_trip_gives_identical_outputs(game, tmp_path):
    wm = tiny_world_model(game)
    path = wm.save(tmp_path / game)
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temp files
    back = WorldModel.load(path)
    assert back.game is wm.game
    assert back.vae.config == wm.vae.config and back.mdnrnn.config == wm.mdnrnn.config
    assert back.mdnrnn.config.reward_head is (game == "car_racing")
    for got, want in zip(outputs(back), outputs(wm), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(back.z0_mu, wm.z0_mu, rtol=0, atol=0)
    torch.testing.assert_close(back.z0_logvar, wm.z0_logvar, rtol=0, atol=0)
    assert not back.vae.training and not back.mdnrnn.training


def test_config_describes_the_model(saved):
    wm, path = saved
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["game"] == "doom_take_cover"
    assert cfg["dreamgym_version"] == dreamgym.__version__
    assert cfg["vae"]["z_dim"] == Z and cfg["mdnrnn"]["hidden"] == H
    assert cfg["z0_bank_size"] == 3


def test_load_with_matching_game(saved):
    assert WorldModel.load(saved[1], game="doom_take_cover").game.name == "doom_take_cover"


def test_load_uses_no_pickle(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the load path must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    WorldModel.load(saved[1])


def test_save_overwrites_in_place(saved, tmp_path):
    wm = tiny_world_model(seed=1)
    path = wm.save(tmp_path / "m")
    tiny_world_model(seed=2).save(path)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(WorldModel.load(path).z0_mu, wm.z0_mu)


# ---------------------------------------------------------------- bad folders


def load_error(folder: Path, **kwargs) -> str:
    with pytest.raises(WorldModelError) as info:
        WorldModel.load(folder, **kwargs)
    return str(info.value)


def test_missing_folder(tmp_path):
    msg = load_error(tmp_path / "nowhere")
    assert "nowhere" in msg and "not found" in msg


def test_missing_config(folder):
    (folder / CONFIG_FILE).unlink()
    msg = load_error(folder)
    assert CONFIG_FILE in msg and "not found" in msg


def test_missing_weights(folder):
    (folder / WEIGHTS_FILE).unlink()
    msg = load_error(folder)
    assert WEIGHTS_FILE in msg and "not found" in msg


def test_truncated_weights(folder):
    path = folder / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert WEIGHTS_FILE in load_error(folder)


def test_empty_weights(folder):
    (folder / WEIGHTS_FILE).write_bytes(b"")
    assert WEIGHTS_FILE in load_error(folder)


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00garbage", b""])
def test_config_garbage(folder, garbage):
    (folder / CONFIG_FILE).write_bytes(garbage)
    msg = load_error(folder)
    assert CONFIG_FILE in msg and "JSON" in msg


def test_wrong_game(folder):
    msg = load_error(folder, game="car_racing")
    assert CONFIG_FILE in msg and "'game'" in msg
    assert "doom_take_cover" in msg and "car_racing" in msg


def test_unknown_game_in_config(folder):
    edit_config(folder, lambda c: c.update(game="pong"))
    msg = load_error(folder)
    assert CONFIG_FILE in msg and "pong" in msg


def test_wrong_shape_names_the_key(folder):
    edit_config(folder, lambda c: c["mdnrnn"].update(hidden=H + 1))
    msg = load_error(folder)
    assert WEIGHTS_FILE in msg and "'mdnrnn.lstm.weight_ih_l0'" in msg
    assert f"{(4 * H, Z + 1)}" in msg and f"{(4 * (H + 1), Z + 1)}" in msg


def test_wrong_latent_size_names_the_key(folder):
    edit_config(folder, lambda c: (c["mdnrnn"].update(z_dim=Z + 1), c["vae"].update(z_dim=Z + 1)))
    msg = load_error(folder)
    assert WEIGHTS_FILE in msg and "key 'vae." in msg


@pytest.mark.parametrize("key", ["vae", "mdnrnn", "game", "format"])
def test_missing_config_key(folder, key):
    edit_config(folder, lambda c: c.pop(key))
    msg = load_error(folder)
    assert CONFIG_FILE in msg and repr(key) in msg


def test_unknown_architecture_field(folder):
    edit_config(folder, lambda c: c["vae"].update(width=3))
    msg = load_error(folder)
    assert CONFIG_FILE in msg and "width" in msg


def test_wrong_format_version(folder):
    edit_config(folder, lambda c: c.update(format=99))
    assert "format" in load_error(folder)


def rewrite_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, folder / WEIGHTS_FILE)


@pytest.mark.parametrize("key", ["vae.fc_mu.weight", "mdnrnn.head.bias", "z0.mu", "z0.logvar"])
def test_missing_weight_names_the_key(folder, key):
    rewrite_weights(folder, lambda t: t.pop(key))
    msg = load_error(folder)
    assert WEIGHTS_FILE in msg and "missing" in msg and repr(key) in msg


def test_unexpected_weight_names_the_key(folder):
    rewrite_weights(folder, lambda t: t.update({"mdnrnn.extra": torch.zeros(1)}))
    msg = load_error(folder)
    assert WEIGHTS_FILE in msg and "'mdnrnn.extra'" in msg


def test_misshapen_bank_names_the_key(folder):
    rewrite_weights(folder, lambda t: t.update({"z0.mu": torch.zeros(3, Z + 2)}))
    msg = load_error(folder)
    assert WEIGHTS_FILE in msg and "'z0.mu'" in msg
