"""Projector and predictor MLPs (MoCo v3 / SimCLR style), used only during training."""

from __future__ import annotations

from torch import nn


def build_mlp(
    num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool
) -> nn.Sequential:
    """Linear layers without bias, BN + ReLU between them; optional affine-free BN at the end.

    ``last_bn=True`` is SimCLR's / MoCo v3's projector ending (BN without gamma/beta), and MoCo
    v3's ViT predictor's; BYOL's projector and predictor end on a plain linear layer.
    """
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def build_projector(in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool) -> nn.Sequential:
    """Three-layer projector."""
    return build_mlp(3, in_dim, hidden_dim, out_dim, last_bn)


def build_predictor(dim: int, hidden_dim: int, last_bn: bool = False) -> nn.Sequential:
    """Two-layer predictor (MoCo v3 / BYOL); MoCo v3's ViT predictor ends on affine-free BN."""
    return build_mlp(2, dim, hidden_dim, dim, last_bn)
