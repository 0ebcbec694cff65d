"""distill: a controller carried to another M by least squares on the run's episodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_world_model
from test_starts import fake_latents

from dreamgym.cli import main
from dreamgym.controller import Controller
from dreamgym.policy import ControllerError, controller_config, load_controller, save_controller
from dreamgym.train import distill
from dreamgym.train.common import LATENTS, open_run

torch.set_num_threads(1)

LENGTHS = (40, 55, 30, 47, 60, 38, 52, 44, 35, 50)  # 451 frames, 10 episodes


def _run(tmp_path, game: str, student_seed: int):
    """A run whose world model has the teacher's V and an M of ``student_seed``, its
    episodes encoded, and a teacher folder (world model + a random C)."""
    teacher = tiny_world_model(game, seed=0)
    student = tiny_world_model(game, seed=student_seed)
    student.vae.load_state_dict(teacher.vae.state_dict())
    run_dir, _ = open_run(tmp_path / "run", game)
    student.save(run_dir / "world_model")
    lat = fake_latents(LENGTHS, z_dim=student.mdnrnn.config.z_dim)
    if game == "doom_take_cover":
        lat["actions"] = lat["actions"][:, :1]
    np.savez(run_dir / LATENTS, **lat)
    teacher_dir = teacher.save(tmp_path / "teacher")
    cfg = controller_config(teacher)
    params = torch.randn(cfg.num_params, generator=torch.Generator().manual_seed(3)) * 0.2
    save_controller(teacher_dir, params, game, {"tau": 1.0})
    return run_dir, teacher_dir, params


@pytest.mark.parametrize("game", ["car_racing", "doom_take_cover"])
def test_a_controller_distilled_onto_its_own_m_is_itself(tmp_path, game):
    """The same M on both sides: the fit recovers the teacher's weights."""
    run_dir, teacher_dir, params = _run(tmp_path, game, student_seed=0)
    out = distill.run(distill.DistillConfig(teacher=str(teacher_dir), ridge=0.0), run_dir)
    student = load_controller(out)
    assert student.info["trained_in"] == "distilled" and student.info["tau"] == 1.0
    assert min(student.info["held_out_r2"]) > 0.999
    np.testing.assert_allclose(student.params, params.numpy(), atol=1e-3)


def test_a_controller_distilled_onto_another_m_reads_its_state(tmp_path):
    run_dir, teacher_dir, _ = _run(tmp_path, "car_racing", student_seed=1)
    rc = main(["distill", str(run_dir), "--teacher", str(teacher_dir), "--every", "2"])
    assert rc == 0
    info = json.loads((run_dir / "distill" / "controller.json").read_text())
    assert info["in_dim"] == 32 + 16 and info["out_dim"] == 3
    assert info["teacher"] == str(teacher_dir)
    assert len(info["held_out_r2"]) == 3 and all(r <= 1.0 for r in info["held_out_r2"])
    assert info["frames"] + info["held_out_frames"] == sum((n + 1) // 2 for n in LENGTHS)
    # the fit explains more of the teacher than a C that ignores the inputs would
    assert np.mean(info["held_out_r2"]) > 0.0


def test_distill_refuses_bad_input_and_writes_nothing(tmp_path):
    run_dir, teacher_dir, _ = _run(tmp_path, "car_racing", student_seed=1)
    for bad, match in [
        ({}, "teacher"),
        ({"teacher": str(teacher_dir), "every": 0}, "every"),
        ({"teacher": str(teacher_dir), "held_out": 1.0}, "held_out"),
        ({"teacher": str(teacher_dir), "ridge": -1.0}, "ridge"),
    ]:
        with pytest.raises(ValueError, match=match):
            distill.run(distill.DistillConfig(**bad), run_dir)
    other = tiny_world_model("car_racing", seed=5)
    other_v = other.save(tmp_path / "other")
    save_controller(other_v, torch.zeros(controller_config(other).num_params), "car_racing")
    with pytest.raises(ValueError, match="another V"):
        distill.run(distill.DistillConfig(teacher=str(other_v)), run_dir)
    assert not (run_dir / "distill").exists()


def test_a_teacher_with_a_hidden_layer_is_fitted_to_its_outputs_before_tanh():
    wm = tiny_world_model("car_racing")
    cfg = controller_config(wm, hidden=4)
    teacher = Controller(cfg)
    teacher.set_flat(torch.randn(cfg.num_params, generator=torch.Generator().manual_seed(1)))
    x, y = distill.pairs(wm, teacher, wm, fake_latents(LENGTHS), every=3)  # x: what C reads
    assert x.shape == (sum((n + 2) // 3 for n in LENGTHS), 32 + 16)
    with torch.no_grad():
        np.testing.assert_allclose(torch.tanh(y).numpy(), teacher(x).numpy(), atol=1e-6)


def test_a_teacher_controller_of_another_m_is_refused_in_one_line(tmp_path):
    run_dir, teacher_dir, _ = _run(tmp_path, "car_racing", student_seed=1)
    other = save_controller(tmp_path / "c40", torch.zeros(3 * 40 + 3), "car_racing")  # reads 40
    cfg = distill.DistillConfig(teacher=str(teacher_dir), teacher_controller=str(other))
    with pytest.raises(ControllerError, match="teacher: .* reads 40 inputs"):
        distill.run(cfg, run_dir)
    assert not (run_dir / "distill").exists()


def test_the_fit_read_in_chunks_of_episodes_is_the_fit_read_at_once():
    """The normal equations and R^2 summed over chunks: the chunk size changes nothing."""
    wm = tiny_world_model("car_racing")
    cfg = controller_config(wm)
    teacher = Controller(cfg)
    teacher.set_flat(torch.randn(cfg.num_params, generator=torch.Generator().manual_seed(2)))
    lat = fake_latents(LENGTHS)
    whole = [distill.pairs(wm, teacher, wm, lat, every=2)]
    parts = list(distill.in_chunks(wm, teacher, wm, lat, every=2, chunk=3))
    assert len(parts) == distill.chunk_count(lat, chunk=3) == 4
    x, y = whole[0]
    x_parts = torch.cat([p[0] for p in parts])  # the same frames (the bank orders them its way)
    assert x_parts.shape == x.shape
    gram = x.double().T @ x.double()  # equal up to float32 rounding of the batched Ms
    torch.testing.assert_close(x_parts.double().T @ x_parts.double(), gram, atol=1e-5, rtol=1e-5)
    w1, b1, n1 = distill.least_squares(whole, 1e-3, bias=True)
    w2, b2, n2 = distill.least_squares(parts, 1e-3, bias=True)
    assert n1 == n2 == len(x)
    torch.testing.assert_close(w2, w1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b2, b1, atol=1e-5, rtol=1e-4)
    noisy = [(x, y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0)))]
    resid = ((x @ w1.T + b1 - noisy[0][1]) ** 2).mean(0)
    expect = 1 - resid / noisy[0][1].var(0, unbiased=False)
    r2, frames = distill.r_squared(noisy, w1, b1)
    assert frames == len(x)
    np.testing.assert_allclose(r2, expect.numpy(), rtol=1e-4)
    split = [(x[:100], noisy[0][1][:100]), (x[100:], noisy[0][1][100:])]
    np.testing.assert_allclose(distill.r_squared(split, w1, b1)[0], r2, rtol=1e-6)
