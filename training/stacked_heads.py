"""Many same-shaped head MLPs run as one (``heads.stacked``): SDSSL puts a projector (and a
predictor) on every exit, a dozen small MLPs whose kernel launches, not their arithmetic, bound
a GPU step. Stacked, each layer is one batched matmul over the heads, and each BatchNorm one
``BatchNorm1d`` over heads × channels — per-(head, channel) statistics over the batch, exactly
what the separate BatchNorms compute. Parity with :func:`training.heads.build_mlp` is tested.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn


class StackedMLP(nn.Module):
    """``heads`` MLPs of :func:`~training.heads.build_mlp`'s shape; input ``[H, N, in_dim]``."""

    def __init__(
        self, heads: int, num_layers: int, in_dim: int, hidden_dim: int, out_dim: int,
        last_bn: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        self.heads = heads
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(heads, a, b)) for a, b in itertools.pairwise(dims)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(heads * d) for d in dims[1:-1])
        self.last = nn.BatchNorm1d(heads * out_dim, affine=False) if last_bn else None
        for w in self.weights:  # nn.Linear's default initialisation, per head
            bound = 1 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)

    def _norm(self, bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
        h, n, c = x.shape
        return bn(x.transpose(0, 1).reshape(n, h * c)).reshape(n, h, c).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, w in enumerate(self.weights):
            x = torch.bmm(x, w)
            if i < len(self.norms):
                x = torch.relu(self._norm(self.norms[i], x))
        return self._norm(self.last, x) if self.last is not None else x

    @torch.no_grad()
    def load_from(self, mlps: list[nn.Sequential]) -> StackedMLP:
        """Copy the weights and BatchNorm state of separate MLPs in (for parity tests)."""
        linears = [[m for m in mlp if isinstance(m, nn.Linear)] for mlp in mlps]
        norms = [[m for m in mlp if isinstance(m, nn.BatchNorm1d)] for mlp in mlps]
        for k, w in enumerate(self.weights):
            w.copy_(torch.stack([lin[k].weight.t() for lin in linears]))
        for k, bn in enumerate([*self.norms, *([self.last] if self.last is not None else [])]):
            parts = [n[k] for n in norms]
            if bn.affine:
                bn.weight.copy_(torch.cat([p.weight for p in parts]))
                bn.bias.copy_(torch.cat([p.bias for p in parts]))
            bn.running_mean.copy_(torch.cat([p.running_mean for p in parts]))
            bn.running_var.copy_(torch.cat([p.running_var for p in parts]))
        return self
