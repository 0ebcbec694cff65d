"""A V that sees what kills you: fit-vae's danger weight on the game's danger pixels."""

import numpy as np
import pytest
import torch

from dreamgym.games import doom_fireballs, get_game
from dreamgym.train import fit_vae
from dreamgym.train.common import open_run
from dreamgym.vae import VAEConfig, danger_weight, frames_to_tensor, vae_loss


def fireball_frames(n=8):
    """Grey rooms, each with a three-pixel fireball somewhere along row 20."""
    frames = np.full((n, 64, 64, 3), (81, 79, 78), np.uint8)
    for i in range(n):
        frames[i, 20, 4 + 7 * i : 7 + 7 * i] = (255, 255, 207)
    return frames


def test_doom_marks_its_fireballs():
    frames = fireball_frames(2)
    frames[1, 40] = (200, 40, 40)  # a row of damage flash: red, not bright
    hot = doom_fireballs(frames)
    assert hot.shape == (2, 64, 64)
    assert hot.sum(axis=(1, 2)).tolist() == [3, 3]
    assert get_game("doom_take_cover").danger_pixels is doom_fireballs
    assert get_game("car_racing").danger_pixels is None


def test_weight_covers_the_fireball_and_a_pixel_around_it():
    w = danger_weight(fireball_frames(1), doom_fireballs, 9.0)
    assert w.shape == (1, 1, 64, 64)
    assert (w == 10.0).sum() == 3 * 5  # 3 pixels wide + 2, 1 row + 2
    assert w[0, 0, 20, 4] == 10.0 and w[0, 0, 18, 4] == 1.0


def test_weighted_loss_reports_the_plain_reconstruction():
    torch.manual_seed(0)
    x, x_hat = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    mu, logvar = torch.zeros(4, 8), torch.zeros(4, 8)
    plain = vae_loss(x, x_hat, mu, logvar)
    ones = vae_loss(x, x_hat, mu, logvar, weight=torch.ones(4, 1, 64, 64))
    torch.testing.assert_close(plain, ones)
    weight = torch.ones(4, 1, 64, 64)
    weight[:, :, :32] = 3.0
    loss, rec, kl = vae_loss(x, x_hat, mu, logvar, weight=weight)
    torch.testing.assert_close(rec, plain[1])
    extra = 2 * (x - x_hat)[:, :, :32].pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(loss, plain[0] + extra)


def fireball_error(weight, out, steps=40):
    """V's squared error on the fireball pixels after ``steps`` on the same batch."""
    torch.manual_seed(0)
    cfg = fit_vae.FitVAEConfig(danger_weight=weight, lr=3e-3, checkpoint_every=10**6)
    out.mkdir()
    trainer = fit_vae._Trainer(VAEConfig(z_dim=8), cfg, out, "doom_take_cover")
    frames = fireball_frames()
    trainer.train(((0, 1, frames) for _ in range(steps)), steps)
    with torch.no_grad():
        mu, _ = trainer.vae.encode(frames_to_tensor(frames))
        err = (trainer.vae.decode(mu) - frames_to_tensor(frames)).pow(2).sum(1)
    return err[torch.as_tensor(doom_fireballs(frames))].mean().item()


def test_danger_weight_teaches_v_the_fireballs(tmp_path):
    plain = fireball_error(0.0, tmp_path / "plain")
    assert fireball_error(50.0, tmp_path / "weighted") < 0.5 * plain


def test_a_game_without_danger_pixels_refuses_the_weight(tmp_path):
    run, _ = open_run(tmp_path / "run", "car_racing")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ValueError, match="car_racing has no danger_pixels"):
        fit_vae.run(fit_vae.FitVAEConfig(danger_weight=5.0), run)
    assert sorted(p.name for p in run.iterdir()) == before
