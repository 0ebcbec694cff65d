"""Dreams that start from real states: M's state along recorded episodes, as a bank.

A dream from the bank of first frames plays a whole episode in M's imagination, so
its errors compound over up to 1,000 steps. ``RealStarts`` instead starts dreams
from states the real game went through: every ``every``-th frame of the run's
recorded episodes, with the recurrent state M reaches by reading that episode's
real latents and actions up to there (teacher-forced, as ``make_real`` runs M).
Short dreams from such starts (``evolve --real-starts --max-steps H``) keep M
near the states it was fitted on, and show the controller the bends, speeds and
verges the real episodes reached, not only the starting line (the short
model-generated rollouts branched from real data of MBPO, Janner et al. 2019).

A world model folder carries a random subset of its run's bank (``assemble``), so
``gym.make(..., starts="real")`` dreams from real states without the run's data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dreamgym.mdnrnn import MDNRNN, LSTMState

CHUNK = 256
"""Episodes teacher-forced at once while the bank is built."""


class RealStarts:
    """A bank of real dream states: (N, Z) latent mean and log-variance, (N, H) h and c."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor, lstm: LSTMState):
        n = mu.shape[0]
        assert logvar.shape == mu.shape and lstm.h.shape[0] == lstm.c.shape[0] == n, (
            f"bank rows disagree: mu {tuple(mu.shape)}, logvar {tuple(logvar.shape)}, "
            f"h {tuple(lstm.h.shape)}, c {tuple(lstm.c.shape)}"
        )
        self.mu, self.logvar, self.lstm = mu, logvar, lstm

    def __len__(self) -> int:
        return self.mu.shape[0]

    @classmethod
    @torch.no_grad()
    def from_latents(
        cls, mdnrnn: MDNRNN, executed_action: Callable, latents: dict, every: int
    ) -> RealStarts:
        """Every ``every``-th frame of each episode in ``latents`` (encode's arrays, encoded
        by the world model's V), with the state ``mdnrnn`` reaches reading the frames and
        the actions (``executed_action`` of the stored ones, ``GameSpec``'s) before it."""
        if every < 1:
            raise ValueError(f"every: expected an integer >= 1, got {every}")
        offsets = np.asarray(latents["offsets"])
        starts, ends = offsets[:-1], offsets[1:]
        Z = mdnrnn.config.z_dim
        if latents["mu"].shape[1] != Z:
            raise ValueError(
                f"latents: z has {latents['mu'].shape[1]} dimensions, the world model {Z}"
            )
        dev = next(mdnrnn.parameters()).device
        mus, logvars, hs, cs = [], [], [], []
        for first in range(0, len(starts), CHUNK):
            s, e = starts[first : first + CHUNK], ends[first : first + CHUNK]
            lengths = e - s
            T = int(lengths.max())
            t = np.arange(T)
            idx = s[:, None] + np.minimum(t[None], lengths[:, None] - 1)  # (B, T)
            z = torch.as_tensor(latents["mu"][idx], device=dev)  # (B, T, Z)
            a = torch.as_tensor(
                np.asarray(executed_action(latents["actions"][idx]), np.float32), device=dev
            )  # (B, T, A)
            state = mdnrnn.initial_state(len(s), device=dev)
            for step in range(0, T, every):
                live = np.flatnonzero(lengths > step)  # episodes that reach this frame
                frames = idx[live, step]
                mus.append(torch.as_tensor(latents["mu"][frames], device=dev))
                logvars.append(torch.as_tensor(latents["logvar"][frames], device=dev))
                keep = torch.as_tensor(live, device=dev)
                hs.append(state.h[keep])
                cs.append(state.c[keep])
                for k in range(step, min(step + every, T)):  # read frames up to the next start
                    state = mdnrnn.cell(state, z[:, k], a[:, k])
        return cls(
            torch.cat(mus).float(), torch.cat(logvars).float(),
            LSTMState(torch.cat(hs), torch.cat(cs)),
        )  # fmt: skip

    def _map(self, f) -> RealStarts:
        """The bank with ``f`` applied to each of its tensors (row selection, a device)."""
        return RealStarts(f(self.mu), f(self.logvar), LSTMState(f(self.lstm.h), f(self.lstm.c)))

    def subset(self, n: int, seed: int = 0) -> RealStarts:
        """n rows drawn without replacement (all rows, in a random order, if n >= len)."""
        g = torch.Generator().manual_seed(seed)  # on the CPU: the same rows on every device
        idx = torch.randperm(len(self), generator=g, device="cpu")[: min(n, len(self))]
        idx = idx.to(self.mu.device)
        return self._map(lambda t: t[idx])

    def to(self, device) -> RealStarts:
        return self._map(lambda t: t.to(device))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The bank as named tensors (``prefix`` + mu, logvar, h, c), for a safetensors file."""
        return {
            prefix + "mu": self.mu, prefix + "logvar": self.logvar,
            prefix + "h": self.lstm.h, prefix + "c": self.lstm.c,
        }  # fmt: skip


__all__ = ["RealStarts"]
