"""The one checkpoint format: tensors as safetensors, plain values as JSON in its metadata."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dreamgym.mdnrnn import MDNRNN, MDNRNNConfig
from dreamgym.train.common import (
    CHECKPOINT,
    LEGACY_CHECKPOINT,
    RunDirError,
    checkpoint_path,
    load_checkpoint,
    module_state,
    module_tensors,
    open_run,
    optimizer_state,
    optimizer_tensors,
    save_checkpoint,
)
from dreamgym.train.fit_mdnrnn import load_trained_mdnrnn
from dreamgym.train.fit_vae import load_trained_vae
from dreamgym.train.provenance import status


def _training(seed: int = 0):
    """A tiny M, its Adam and a decaying learning rate, as fit-mdnrnn sets them up."""
    torch.manual_seed(seed)
    m = MDNRNN(MDNRNNConfig(z_dim=4, action_dim=2, hidden=8, n_mix=2))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: math.exp(-0.1 * s))
    return m, opt, sched


def _steps(m, opt, sched, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        z, a = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 2, generator=g)
        out, _ = m(z, a)
        loss = out.mixture.mu.pow(2).mean() + out.done_logit.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_model_and_adam_round_trip_continue_training_identically(tmp_path):
    m, opt, sched = _training()
    _steps(m, opt, sched, 3, seed=1)
    optim, values = optimizer_tensors(opt.state_dict())
    values |= {"config": m.config.to_dict(), "scheduler": sched.state_dict(), "step": 3}
    save_checkpoint(tmp_path / CHECKPOINT, module_tensors("model", m.state_dict()) | optim, values)

    tensors, values = load_checkpoint(tmp_path / CHECKPOINT)
    assert values["step"] == 3 and {"optim.0.step", "optim.0.exp_avg_sq"} <= set(tensors)
    n, opt_n, sched_n = _training(seed=99)  # other initial weights, replaced by the file's
    assert MDNRNNConfig(**values["config"]) == n.config
    n.load_state_dict(module_state("model", tensors))
    opt_n.load_state_dict(optimizer_state(tensors, values))
    sched_n.load_state_dict(values["scheduler"])
    _steps(m, opt, sched, 2, seed=2)
    _steps(n, opt_n, sched_n, 2, seed=2)
    for (key, a), b in zip(m.state_dict().items(), n.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert opt.state_dict()["state"][0]["step"] == opt_n.state_dict()["state"][0]["step"] == 5
    assert sched.get_last_lr() == sched_n.get_last_lr()


def test_numpy_arrays_and_plain_values_round_trip(tmp_path):
    arrays = {"x": np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::2], "n": np.int64(7)}
    save_checkpoint(tmp_path / "c.safetensors", arrays, {"best": 1.5, "rng": [1, "a"]})
    back, values = load_checkpoint(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(back["x"], arrays["x"])
    assert back["n"].shape == () and back["n"] == 7
    assert values == {"best": 1.5, "rng": [1, "a"]}
    assert not (tmp_path / "c.safetensors.tmp").exists()


def test_a_corrupt_checkpoint_says_delete_it(tmp_path):
    path = tmp_path / CHECKPOINT
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(RunDirError, match=f"{CHECKPOINT}: corrupt checkpoint.*delete it"):
        load_checkpoint(path)


def test_an_older_dreamgyms_checkpoint_pt_is_named_with_what_to_do(tmp_path):
    run, _ = open_run(tmp_path / "run", "doom_take_cover")
    for folder in ("vae", "mdnrnn", "mdnrnn/member1"):
        (run / folder).mkdir()
        (run / folder / LEGACY_CHECKPOINT).write_bytes(b"a torch pickle")
    with pytest.raises(RunDirError, match=r"vae/checkpoint\.pt: .*delete it to run fit-vae"):
        load_trained_vae(run)
    for k, folder in ((0, "mdnrnn"), (1, "mdnrnn/member1")):
        with pytest.raises(RunDirError, match=rf"{folder}/checkpoint\.pt: .*delete it"):
            load_trained_mdnrnn(run, member=k)
    rows = {stage: (state, note) for stage, state, note in status(run)}
    assert rows["fit-vae"][0] == rows["fit-mdnrnn"][0] == "stale"
    assert "checkpoint.pt" in rows["fit-vae"][1]
    (run / "vae" / CHECKPOINT).write_bytes(b"")  # a new checkpoint beside it: that one is read
    assert checkpoint_path(run / "vae", "fit-vae") == run / "vae" / CHECKPOINT
