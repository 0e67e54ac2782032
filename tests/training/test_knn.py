"""The k-NN scorer against a brute-force reference, and the linear probe on easy data."""

from __future__ import annotations

import math

import torch

from training.knn import knn_predict, knn_top1
from training.linear_probe import linear_top1


def brute_force_knn(train, train_labels, test, num_classes, k, temperature):
    """DINO's rule written out per query: cosine, k most similar, votes exp(sim / T)."""
    preds = []
    for q in test:
        sims = []
        for x, y in zip(train, train_labels, strict=True):
            cos = float(q @ x) / (math.sqrt(float(q @ q)) * math.sqrt(float(x @ x)))
            sims.append((cos, int(y)))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for cos, y in sims[:k]:
            votes[y] += math.exp(cos / temperature)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def test_knn_equals_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(200, 8, generator=gen)
    labels = torch.randint(0, 5, (200,), generator=gen)
    test = torch.randn(50, 8, generator=gen)
    for k, t in ((20, 0.07), (5, 0.5), (1, 0.07)):
        ours = knn_predict(train, labels, test, 5, k, t, chunk=16)
        ref = brute_force_knn(train, labels, test, 5, k, t)
        assert torch.equal(ours, ref), (k, t)


def test_knn_top1_on_separable_clusters() -> None:
    gen = torch.Generator().manual_seed(1)
    centres = torch.eye(4) * 10
    labels = torch.arange(4).repeat(25)
    train = centres[labels] + torch.randn(100, 4, generator=gen)
    test = centres[labels] + torch.randn(100, 4, generator=gen)
    assert knn_top1(train, labels, test, labels) == 1.0


def test_linear_probe_learns_a_linear_rule() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, 6, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    xt = torch.randn(200, 6, generator=gen)
    yt = (xt[:, 0] + 0.5 * xt[:, 1] > 0).long()
    assert linear_top1(x, y, xt, yt) > 0.95
