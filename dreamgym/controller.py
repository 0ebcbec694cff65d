"""C: the paper's small controller from the controller input to a tanh action.

Doom: a = tanh(W [z, c, h]), one output, no bias (1,088 parameters).
CarRacing: a = tanh(W [z, h] + b), three outputs (867 parameters).
With ``hidden`` units (the paper's ablation "C with a 40-unit hidden layer"):
a = tanh(W tanh(W_h x + b_h) + b).
The game maps the tanh output into its action space (see ``GameSpec``).
CMA-ES sees the parameters as one flat vector; ``batched_forward`` applies P
parameter vectors to P groups of observations in one call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class ControllerConfig:
    """Shape of C: input and output sizes, bias, and an optional tanh hidden layer."""

    in_dim: int
    """Size of the observation the controller reads ([z, h] or [z, c, h])."""
    out_dim: int
    """Number of tanh outputs."""
    bias: bool = True
    """Whether the layers have biases (the paper's Doom controller has none)."""
    hidden: int = 0
    """Units of a tanh hidden layer (0: the paper's single linear layer)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's name and shape, in the order of the flat parameter vector."""
        layers = [("hidden_", self.in_dim, self.hidden)] if self.hidden else []
        layers.append(("", self.hidden or self.in_dim, self.out_dim))
        shapes = {}
        for prefix, fan_in, fan_out in layers:
            shapes[prefix + "weight"] = (fan_out, fan_in)
            if self.bias:
                shapes[prefix + "bias"] = (fan_out,)
        return shapes

    @property
    def num_params(self) -> int:
        return sum(torch.Size(s).numel() for s in self.shapes().values())


def unflatten(config: ControllerConfig, params: torch.Tensor) -> dict[str, torch.Tensor]:
    """(..., num_params) -> each tensor as (..., *shape), views in ``shapes()`` order."""
    lead, out, at = params.shape[:-1], {}, 0
    for name, shape in config.shapes().items():
        n = torch.Size(shape).numel()
        out[name] = params[..., at : at + n].reshape(*lead, *shape)
        at += n
    return out


class Controller(nn.Module):
    """C as a module; its state dict (and its file) holds the tensors of ``shapes()``."""

    def __init__(self, config: ControllerConfig | None = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else ControllerConfig(**kwargs)
        for name, shape in self.config.shapes().items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))

    @property
    def num_params(self) -> int:
        return self.config.num_params

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim) in (-1, 1)."""
        return torch.tanh(self.preactivation(obs))

    def preactivation(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim): the outputs before their tanh."""
        p = dict(self.named_parameters())
        x = obs
        if self.config.hidden:
            x = torch.tanh(F.linear(x, p["hidden_weight"], p.get("hidden_bias")))
        return F.linear(x, p["weight"], p.get("bias"))

    def get_flat(self) -> torch.Tensor:
        """All parameters as one vector: layer by layer, W row-major, then b."""
        params = dict(self.named_parameters())
        return torch.cat([params[k].detach().reshape(-1) for k in self.config.shapes()])

    def set_flat(self, params) -> None:
        params = torch.as_tensor(params, dtype=torch.float32)
        if params.shape != (self.num_params,):
            raise ValueError(
                f"params: expected a vector of {self.num_params} values, got shape "
                f"{tuple(params.shape)}"
            )
        own = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in unflatten(self.config, params).items():
                own[name].copy_(value)


def batched_forward(config: ControllerConfig, params: torch.Tensor, obs: torch.Tensor):
    """Apply P controllers to P groups of observations in one call.

    params (P, num_params), obs (P, N, in_dim) -> actions (P, N, out_dim).
    """
    P, n = params.shape
    assert n == config.num_params, f"params (P, {config.num_params}) expected, got {(P, n)}"
    assert obs.shape[0] == P and obs.shape[-1] == config.in_dim, (
        f"obs (P={P}, N, {config.in_dim}) expected, got {tuple(obs.shape)}"
    )
    t = unflatten(config, params)
    x = obs
    for prefix in ("hidden_", "") if config.hidden else ("",):
        x = torch.bmm(x, t[prefix + "weight"].transpose(1, 2))  # (P, N, fan_out)
        if config.bias:
            x = x + t[prefix + "bias"].unsqueeze(1)
        x = torch.tanh(x)
    return x


__all__ = ["Controller", "ControllerConfig", "batched_forward", "unflatten"]
