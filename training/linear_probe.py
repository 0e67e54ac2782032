"""Linear probe on frozen embeddings: multinomial logistic regression, full-batch L-BFGS."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_top1(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    max_iter: int = 100,
    weight_decay: float = 1e-4,
) -> float:
    """Top-1 accuracy (0..1) of a linear classifier on standardised frozen features.

    Deterministic (zero init, full batch); ``weight_decay`` is an L2 penalty on the weights.
    """
    x_train, x_test = train_feats.float(), test_feats.float()
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(x_train.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, train_labels)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (x_test @ weight + bias).argmax(dim=1)
    return (pred == test_labels).float().mean().item()
