"""M: an LSTM with a mixture density head that predicts the next latent z.

Each latent dimension has its own K-component 1-D gaussian mixture (log-weights,
means, log-stds), as in Ha & Schmidhuber (2018). A done head predicts the end of
the episode (the paper's "restart" flag); an optional reward head predicts the
reward of the transition. Pure torch: recurrent state is passed in and out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class MDNRNNConfig:
    """Architecture of M: the LSTM, its mixture density head, and its done and reward heads."""

    z_dim: int = 32
    """Size of the latent vector z that M consumes and predicts."""
    action_dim: int = 3
    """Size of the action vector M consumes (the action the game executed)."""
    hidden: int = 256
    """LSTM units."""
    n_mix: int = 5
    """Gaussian components per latent dimension."""
    reward_head: bool = False
    """Predict the transition's reward (needed where the reward is not a constant)."""
    dropout: float = 0.0
    """Dropout rate on the LSTM output the heads read, one mask per training sequence
    and per dream, drawn when it starts (Wellmer & Kwok, "Dropout's Dream Land",
    2021): each dream is played by a slightly different M, so an agent cannot profit
    from the errors of one. 0: none."""

    def __post_init__(self):
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Mixture(NamedTuple):
    """Per-dimension gaussian mixture; each field is (..., Z, K)."""

    logit_pi: torch.Tensor
    mu: torch.Tensor
    log_sigma: torch.Tensor


class LSTMState(NamedTuple):
    """M's recurrent state: h and c, each (B, H)."""

    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)


class MDNRNNOutput(NamedTuple):
    """M's predictions: the mixture over the next z, the done logit, and the reward
    (None without a reward head)."""

    mixture: Mixture
    done_logit: torch.Tensor  # (..., )
    reward: torch.Tensor | None  # (..., ) or None without a reward head


class MDNRNN(nn.Module):
    """LSTM + per-dimension mixture density head + done head (+ reward head)."""

    def __init__(self, config: MDNRNNConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else MDNRNNConfig(**kwargs)
        c = self.config
        self.lstm = nn.LSTM(c.z_dim + c.action_dim, c.hidden, batch_first=True)
        n_out = 3 * c.n_mix * c.z_dim + 1 + int(c.reward_head)
        self.head = nn.Linear(c.hidden, n_out)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> LSTMState:
        zeros = torch.zeros(batch, self.config.hidden, device=device, dtype=dtype)
        return LSTMState(zeros, zeros.clone())

    def _split(self, out: torch.Tensor) -> MDNRNNOutput:
        """Head output (..., n_out) -> mixture (..., Z, K), done logit, reward."""
        c = self.config
        n = c.n_mix * c.z_dim
        shape = out.shape[:-1] + (c.z_dim, c.n_mix)
        logit_pi = out[..., :n].reshape(shape)
        mu = out[..., n : 2 * n].reshape(shape)
        log_sigma = out[..., 2 * n : 3 * n].reshape(shape)
        done_logit = out[..., 3 * n]
        reward = out[..., 3 * n + 1] if c.reward_head else None
        return MDNRNNOutput(Mixture(logit_pi, mu, log_sigma), done_logit, reward)

    def forward(
        self,
        z: torch.Tensor,
        a: torch.Tensor,
        state: LSTMState | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[MDNRNNOutput, LSTMState]:
        """Sequence forward for training. z (B, T, Z), a (B, T, A); ``mask`` (B, H), one
        dropout mask per sequence (``dropout_mask``), multiplies what the heads read."""
        B, T, Z = z.shape
        assert a.shape[:2] == (B, T), f"actions {tuple(a.shape)} do not match z {tuple(z.shape)}"
        x = torch.cat([z, a], dim=-1)
        hx = None if state is None else (state.h.unsqueeze(0), state.c.unsqueeze(0))
        y, (h, c) = self.lstm(x, hx)  # y: (B, T, H)
        if mask is not None:
            y = y * mask.unsqueeze(1)
        return self._split(self.head(y)), LSTMState(h[0], c[0])

    def step(
        self,
        state: LSTMState,
        z: torch.Tensor,
        a: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[LSTMState, MDNRNNOutput]:
        """One transition for a batch: z (B, Z), a (B, A) -> new state and predictions.

        ``mask`` (B, H): the dropout mask of each row (None: no dropout); it changes
        what the heads read, never the recurrent state.
        """
        new = self.cell(state, z, a)
        h = new.h if mask is None else new.h * mask
        return new, self._split(self.head(h))

    def cell(self, state: LSTMState, z: torch.Tensor, a: torch.Tensor) -> LSTMState:
        """The LSTM alone, for a batch: the new state, without the heads' predictions.

        Uses the LSTM's own weights directly (gate order i, f, g, o), which avoids
        nn.LSTM's per-call overhead in the dream's hot loop.
        """
        lstm = self.lstm
        gates = torch.mm(torch.cat([z, a], dim=-1), lstm.weight_ih_l0.t())  # (B, 4H)
        gates.addmm_(state.h, lstm.weight_hh_l0.t())
        gates += lstm.bias_ih_l0 + lstm.bias_hh_l0
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return LSTMState(h, c)


def dropout_mask(
    batch: int, hidden: int, p: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor | None:
    """(batch, hidden) inverted-dropout masks: 0 with probability p, else 1 / (1 - p).

    None when p == 0, so a model without dropout draws no random numbers.
    """
    if p == 0:
        return None
    u = torch.rand((batch, hidden), generator=generator, device=device)
    return (u >= p).float() / (1 - p)


def mixture_log_prob(mixture: Mixture, target: torch.Tensor) -> torch.Tensor:
    """log p(target) per latent dimension: target (..., Z) -> (..., Z), via logsumexp."""
    y = target.unsqueeze(-1)  # (..., Z, 1)
    log_pi = F.log_softmax(mixture.logit_pi, dim=-1)
    sigma = mixture.log_sigma.exp()
    log_n = -0.5 * ((y - mixture.mu) / sigma).pow(2) - mixture.log_sigma - LOG_SQRT_2PI
    return torch.logsumexp(log_pi + log_n, dim=-1)


def mdn_nll(mixture: Mixture, target: torch.Tensor, mask: torch.Tensor | None = None):
    """Negative log likelihood averaged over batch, time and latent dimension.

    mask (same leading shape as target without Z) selects valid steps.
    """
    nll = -mixture_log_prob(mixture, target)  # (..., Z)
    if mask is None:
        return nll.mean()
    m = mask.to(nll.dtype).unsqueeze(-1)
    return (nll * m).sum() / (m.sum() * nll.shape[-1]).clamp(min=1)


DONE_POS_WEIGHT = 10.0
"""How many times a death weighs in the done head's cross-entropy (``fit-mdnrnn``'s default).

The head's sigmoid then overstates the chance of dying: the calibrated one is
``sigmoid(done_logit - log(DONE_POS_WEIGHT))`` (``dream_core.step``'s hazard reads it so)."""


def done_loss(
    done_logit: torch.Tensor,
    done: torch.Tensor,
    pos_weight: float = DONE_POS_WEIGHT,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy of the done head, positives weighted ``pos_weight`` times."""
    w = torch.tensor(pos_weight, dtype=done_logit.dtype, device=done_logit.device)
    loss = F.binary_cross_entropy_with_logits(
        done_logit, done.to(done_logit.dtype), pos_weight=w, reduction="none"
    )
    if mask is None:
        return loss.mean()
    m = mask.to(loss.dtype)
    return (loss * m).sum() / m.sum().clamp(min=1)


def sample(mixture: Mixture, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw z' (..., Z) from the mixture at temperature tau.

    Mixture logits are divided by tau and each gaussian's sigma multiplied by
    sqrt(tau), as in the paper. tau == 0 is the limit: the top mode's mean.
    """
    logit_pi, mu, log_sigma = mixture
    if tau == 0:
        k = logit_pi.argmax(-1, keepdim=True)
        return mu.gather(-1, k).squeeze(-1)
    # Gumbel-max: argmax(logits / tau + g) is a draw from softmax(logits / tau).
    u = torch.rand(logit_pi.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    g = -torch.log(-torch.log(u.clamp_(min=1e-20)))
    k = (logit_pi / tau + g).argmax(-1, keepdim=True)  # (..., Z, 1)
    mean = mu.gather(-1, k).squeeze(-1)
    sigma = log_sigma.gather(-1, k).squeeze(-1).exp() * math.sqrt(tau)
    eps = torch.randn(mean.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mean + sigma * eps


__all__ = [
    "MDNRNN", "MDNRNNConfig", "Mixture", "LSTMState", "MDNRNNOutput", "dropout_mask",
    "mixture_log_prob", "mdn_nll", "done_loss", "DONE_POS_WEIGHT", "sample",
]  # fmt: skip
