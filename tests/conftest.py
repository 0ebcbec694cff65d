"""Shared fixtures: tiny random world models (the games' z sizes, a 16-unit LSTM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import torch

from dreamgym import WorldModel
from dreamgym.games import ENV_IDS

torch.set_num_threads(1)

DREAM_IDS = sorted(ENV_IDS)


def tiny_world_model(game: str, seed: int = 0, done_bias: float = -1.0) -> WorldModel:
    """A random world model of ``game`` with a 4-frame bank and a 16-unit LSTM.

    The done head is sharpened so that, with ``done_bias=-1``, dreams end after
    about 8 steps (1 to 20); a large negative bias gives dreams that never end.
    """
    torch.manual_seed(seed)
    wm = WorldModel.create(game, n_bank=4, hidden=16)
    c = wm.mdnrnn.config
    with torch.no_grad():
        wm.z0_mu.normal_()
        wm.z0_logvar.fill_(-2.0)
        done = 3 * c.n_mix * c.z_dim  # the done logit's row in M's head
        wm.mdnrnn.head.weight[done] *= 8.0
        wm.mdnrnn.head.bias[done] = done_bias
    return wm


@pytest.fixture(scope="session")
def world_models() -> dict[str, WorldModel]:
    """One tiny world model per game, shared read-only by every test."""
    return {game: tiny_world_model(game) for game in sorted(set(ENV_IDS.values()))}


@pytest.fixture(params=DREAM_IDS)
def dream_id(request) -> str:
    return request.param


@pytest.fixture
def wm(dream_id, world_models) -> WorldModel:
    """The tiny world model of ``dream_id``'s game."""
    return world_models[ENV_IDS[dream_id]]


def sigkill_when(args: list[str], ready: Callable[[], bool], what: str) -> None:
    """Run ``python -c *args`` and SIGKILL it once ``ready()`` holds (within 60 s)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not ready():
            time.sleep(0.05)
        assert proc.poll() is None, f"{what} exited before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
