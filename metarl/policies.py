"""Policies used functionally: parameters are an explicit dict, so fast weights vmap over tasks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """A plain MLP ``sizes[0] → … → sizes[-1]`` with ``activation`` between layers."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian policy ``N(μ_θ(s), diag σ²)`` with a state-independent learned ``log σ``.

    As in the MAML paper's experiments (Finn et al. 2017, arXiv:1703.03400, App. A.2): two hidden layers of
    100 ReLU units, initial standard deviation 1.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        activation: str = "relu",
        init_std: float = 1.0,
        min_std: float = 1e-6,
    ) -> None:
        super().__init__()
        self.mean = mlp([obs_dim, *hidden_sizes, action_dim], activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))
        self.min_log_std = math.log(min_std)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(obs)
        log_std = self.log_std.clamp(min=self.min_log_std).expand_as(mean)
        return mean, log_std

    def params(self) -> Params:
        """The parameters as a name → tensor dict (the meta-parameters θ)."""
        return dict(self.named_parameters())

    def distribution(self, params: Params, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ)`` under explicit ``params`` (fast weights)."""
        return functional_call(self, params, (obs,))
