"""Each loss against a value computed by hand or by the original authors' formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import byol_loss, info_nce, nt_xent


def test_info_nce_hand_computed() -> None:
    # Two samples, orthonormal keys: q0 = k0, q1 = k1.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = q.clone()
    tau = 0.2
    # Each row: logits [1/tau, 0]; CE = -log(e^{5} / (e^{5} + 1)).
    ce = -math.log(math.exp(5.0) / (math.exp(5.0) + 1.0))
    assert info_nce(q, k, tau).item() == pytest.approx(2 * tau * ce, rel=1e-6)


def test_info_nce_offset_and_leading_dims() -> None:
    torch.manual_seed(0)
    q = torch.randn(3, 4, 8)  # 3 exits, 4 samples
    keys = torch.randn(12, 8)  # 3 ranks x 4 samples; this rank is the middle block
    per_exit = [info_nce(q[i], keys, 0.2, offset=4) for i in range(3)]
    assert info_nce(q, keys, 0.2, offset=4).item() == pytest.approx(
        torch.stack(per_exit).mean().item(), rel=1e-6
    )


def _simclr_reference(features: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's loss the way the SDSSL authors wrote it: label matrix, drop the diagonal."""
    b = features.shape[0]
    features = F.normalize(features, dim=1)
    labels = torch.cat([torch.arange(b // 2) for _ in range(2)])
    labels = (labels[None] == labels[:, None]).float()
    sim = features @ features.T
    mask = torch.eye(b, dtype=torch.bool)
    labels = labels[~mask].view(b, -1)
    sim = sim[~mask].view(b, -1)
    positives = sim[labels.bool()].view(b, -1)
    negatives = sim[~labels.bool()].view(b, -1)
    logits = torch.cat([positives, negatives], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))


def _sd_simclr_reference(mid: torch.Tensor, final: torch.Tensor, tau: float) -> torch.Tensor:
    """SDSSL's intermediate SimCLR term (authors' formulation): rows of one exit against the
    final layer's embeddings, the same-view final embedding of the same sample masked out."""
    b = mid.shape[0]
    mid, final = F.normalize(mid, dim=1), F.normalize(final, dim=1)
    labels = torch.cat([torch.arange(b // 2) for _ in range(2)])
    labels = (labels[None] == labels[:, None]).float()
    mask = torch.eye(b, dtype=torch.bool)
    sim = mid @ final.T
    labels = labels[~mask].view(b, -1)
    sim = sim[~mask].view(b, -1)
    positives = sim[labels.bool()].view(b, -1)
    negatives = sim[~labels.bool()].view(b, -1)
    logits = torch.cat([positives, negatives], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))


def test_nt_xent_hand_computed() -> None:
    # B = 1: rows [v1; v2]; each row sees only its partner (itself is masked): loss = 0.
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    assert nt_xent(z, z, 0.2).item() == pytest.approx(0.0, abs=1e-7)
    # B = 2, orthonormal-ish: row 0 = e0, partner row 2 = e0, others e1 -> logits [5, 0] per row.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # row 0: keys (minus self) = [e1, e0(partner), e1] -> logits [0, 5, 0]
    expected = -math.log(math.exp(5.0) / (math.exp(5.0) + 2.0))
    assert nt_xent(z, z, 0.2).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_matches_authors_formula() -> None:
    torch.manual_seed(1)
    z = torch.randn(10, 16)
    assert nt_xent(z, z, 0.2).item() == pytest.approx(_simclr_reference(z, 0.2).item(), rel=1e-5)


def test_sd_simclr_masks_same_view_final() -> None:
    torch.manual_seed(2)
    mid, final = torch.randn(8, 16), torch.randn(8, 16)
    ours = nt_xent(mid, final, 0.2)
    assert ours.item() == pytest.approx(_sd_simclr_reference(mid, final, 0.2).item(), rel=1e-5)


def test_nt_xent_row_ignores_its_own_final() -> None:
    """Per row, the same-view final embedding of the same sample never enters the softmax."""
    # B = 2, rows [view1 s0, view1 s1, view2 s0, view2 s1]; every final key is e0.
    mid = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    final = torch.tensor([[1.0, 0.0]] * 4)
    # Each row's keys all have the same similarity, so CE = log(#keys in the softmax):
    # log 3 with the row's own final masked out, log 4 were it not.
    assert nt_xent(mid, final, 0.2).item() == pytest.approx(math.log(3.0), rel=1e-6)


def test_byol_loss_hand_computed() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    # cosines 1 and 0 -> losses 0 and 2 -> mean 1.
    assert byol_loss(p, t).item() == pytest.approx(1.0)
