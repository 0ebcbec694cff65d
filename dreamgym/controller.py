"""C: the paper's single linear layer from the controller input to a tanh action.

Doom: a = tanh(W [z, c, h]), one output, no bias (1,088 parameters).
CarRacing: a = tanh(W [z, h] + b), three outputs (867 parameters).
The game maps the tanh output into its action space (see ``GameSpec``).
CMA-ES sees the parameters as one flat vector; ``batched_forward`` applies P
parameter vectors to P groups of observations in one call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ControllerConfig:
    in_dim: int
    """Size of the observation the controller reads ([z, h] or [z, c, h])."""
    out_dim: int
    """Number of tanh outputs."""
    bias: bool = True
    """Whether the layer has a bias (the paper's Doom controller has none)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def num_params(self) -> int:
        return self.out_dim * self.in_dim + (self.out_dim if self.bias else 0)


class LinearController(nn.Module):
    def __init__(self, config: ControllerConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else ControllerConfig(**kwargs)
        c = self.config
        self.linear = nn.Linear(c.in_dim, c.out_dim, bias=c.bias)
        nn.init.zeros_(self.linear.weight)
        if c.bias:
            nn.init.zeros_(self.linear.bias)

    @property
    def num_params(self) -> int:
        return self.config.num_params

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim) in (-1, 1)."""
        return torch.tanh(self.linear(obs))

    def get_flat(self) -> torch.Tensor:
        """All parameters as one vector: W row-major, then b."""
        return torch.cat([p.detach().reshape(-1) for p in self.linear.parameters()])

    def set_flat(self, params) -> None:
        params = torch.as_tensor(params, dtype=self.linear.weight.dtype)
        if params.shape != (self.num_params,):
            raise ValueError(
                f"params: expected a vector of {self.num_params} values, got shape "
                f"{tuple(params.shape)}"
            )
        c = self.config
        n_w = c.out_dim * c.in_dim
        with torch.no_grad():
            self.linear.weight.copy_(params[:n_w].view(c.out_dim, c.in_dim))
            if c.bias:
                self.linear.bias.copy_(params[n_w:])


def batched_forward(config: ControllerConfig, params: torch.Tensor, obs: torch.Tensor):
    """Apply P controllers to P groups of observations in one call.

    params (P, num_params), obs (P, N, in_dim) -> actions (P, N, out_dim).
    """
    P, n = params.shape
    assert n == config.num_params, f"params (P, {config.num_params}) expected, got {(P, n)}"
    assert obs.shape[0] == P and obs.shape[-1] == config.in_dim, (
        f"obs (P={P}, N, {config.in_dim}) expected, got {tuple(obs.shape)}"
    )
    n_w = config.out_dim * config.in_dim
    w = params[:, :n_w].reshape(P, config.out_dim, config.in_dim)  # (P, O, D)
    y = torch.bmm(obs, w.transpose(1, 2))  # (P, N, O)
    if config.bias:
        y = y + params[:, n_w:].unsqueeze(1)
    return torch.tanh(y)


__all__ = ["LinearController", "ControllerConfig", "batched_forward"]
