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
With an ensemble of Ms the bank holds every member's state at each start (each M
read the same episode up to there), so a dream played by member k starts from
k's state while the controller reads member 0's, as in the real game.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from dreamgym.mdnrnn import MDNRNN, LSTMState

CHUNK = 256
"""Episodes teacher-forced at once while the bank is built."""

MEMBER_KEY = "members."
"""Keys of the states of members 1, 2, ... in ``tensors`` (``members.<k>.h``, ``.c``)."""


class RealStarts:
    """A bank of real dream states: (N, Z) latent mean and log-variance, (N, H) h and c
    of member 0's M, and ``ensemble``: the (N, H) h and c of members 1, 2, ... (none
    for a bank of one M)."""

    def __init__(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        lstm: LSTMState,
        ensemble: Sequence[LSTMState] = (),
    ):
        n = mu.shape[0]
        ensemble = list(ensemble)
        rows = [s.h.shape[0] for s in (lstm, *ensemble)] + [s.c.shape[0] for s in (lstm, *ensemble)]
        assert logvar.shape == mu.shape and set(rows) == {n}, (
            f"bank rows disagree: mu {tuple(mu.shape)}, logvar {tuple(logvar.shape)}, "
            f"h and c of each member {rows}"
        )
        self.mu, self.logvar, self.lstm, self.ensemble = mu, logvar, lstm, ensemble

    @property
    def members(self) -> list[LSTMState]:
        """Every member's states, member 0 first."""
        return [self.lstm, *self.ensemble]

    def __len__(self) -> int:
        return self.mu.shape[0]

    @classmethod
    @torch.no_grad()
    def from_latents(
        cls,
        mdnrnn: MDNRNN | Sequence[MDNRNN],
        executed_action: Callable,
        latents: dict,
        every: int,
    ) -> RealStarts:
        """Every ``every``-th frame of each episode in ``latents`` (encode's arrays, encoded
        by the world model's V), with the state ``mdnrnn`` reaches reading the frames and
        the actions (``executed_action`` of the stored ones, ``GameSpec``'s) before it.
        A list of Ms (``WorldModel.members``) gives each one's state at every start."""
        ms = [mdnrnn] if isinstance(mdnrnn, MDNRNN) else list(mdnrnn)
        if every < 1:
            raise ValueError(f"every: expected an integer >= 1, got {every}")
        offsets = np.asarray(latents["offsets"])
        starts, ends = offsets[:-1], offsets[1:]
        Z = ms[0].config.z_dim
        if latents["mu"].shape[1] != Z:
            raise ValueError(
                f"latents: z has {latents['mu'].shape[1]} dimensions, the world model {Z}"
            )
        dev = next(ms[0].parameters()).device
        mus, logvars = [], []
        hs, cs = [[] for _ in ms], [[] for _ in ms]  # per member
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
            states = [m.initial_state(len(s), device=dev) for m in ms]
            for step in range(0, T, every):
                live = np.flatnonzero(lengths > step)  # episodes that reach this frame
                frames = idx[live, step]
                mus.append(torch.as_tensor(latents["mu"][frames], device=dev))
                logvars.append(torch.as_tensor(latents["logvar"][frames], device=dev))
                keep = torch.as_tensor(live, device=dev)
                for j, state in enumerate(states):
                    hs[j].append(state.h[keep])
                    cs[j].append(state.c[keep])
                for k in range(step, min(step + every, T)):  # read frames up to the next start
                    states = [
                        m.cell(st, z[:, k], a[:, k]) for m, st in zip(ms, states, strict=True)
                    ]
        lstms = [LSTMState(torch.cat(h), torch.cat(c)) for h, c in zip(hs, cs, strict=True)]
        return cls(torch.cat(mus).float(), torch.cat(logvars).float(), lstms[0], lstms[1:])

    def _map(self, f) -> RealStarts:
        """The bank with ``f`` applied to each of its tensors (row selection, a device)."""
        h, *others = (LSTMState(f(s.h), f(s.c)) for s in self.members)
        return RealStarts(f(self.mu), f(self.logvar), h, others)

    def subset(self, n: int, seed: int = 0) -> RealStarts:
        """n rows drawn without replacement (all rows, in a random order, if n >= len)."""
        g = torch.Generator().manual_seed(seed)  # on the CPU: the same rows on every device
        idx = torch.randperm(len(self), generator=g, device="cpu")[: min(n, len(self))]
        idx = idx.to(self.mu.device)
        return self._map(lambda t: t[idx])

    def to(self, device) -> RealStarts:
        return self._map(lambda t: t.to(device))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The bank as named tensors (``prefix`` + mu, logvar, h, c, and ``members.<k>.h``
        and ``.c`` for members 1, 2, ...), for a safetensors file."""
        out = {
            prefix + "mu": self.mu, prefix + "logvar": self.logvar,
            prefix + "h": self.lstm.h, prefix + "c": self.lstm.c,
        }  # fmt: skip
        for k, state in enumerate(self.ensemble, 1):
            out[f"{prefix}{MEMBER_KEY}{k}.h"] = state.h
            out[f"{prefix}{MEMBER_KEY}{k}.c"] = state.c
        return out


__all__ = ["RealStarts"]
