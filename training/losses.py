"""The base losses as plain functions. Leading dims of ``query`` (e.g. exit depths) are averaged.

Each function takes ``keys`` already gathered across ranks and the ``offset`` of this rank's
block in them, so the same code serves one process and DDP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float, offset: int = 0):
    """MoCo v3: row i of ``query [..., B, D]`` matches ``keys[offset + i]``; loss is 2τ·CE."""
    q = F.normalize(query, dim=-1)
    k = F.normalize(keys, dim=-1)
    logits = q @ k.T / temperature  # [..., B, M]
    b = q.shape[-2]
    labels = torch.arange(b, device=q.device) + offset
    labels = labels.expand(logits.shape[:-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    return 2.0 * temperature * loss


def nt_xent(query: torch.Tensor, keys: torch.Tensor, temperature: float, offset: int = 0):
    """SimCLR NT-Xent. ``query [..., 2B, D]`` holds [view 1; view 2] of B samples.

    Row i's positive is key ``offset + partner(i)`` (the same sample's other view); key
    ``offset + i`` (the same view of the same sample) is masked out; all other keys are
    negatives. With ``keys = query`` this is SimCLR's loss; with ``keys`` = the detached final
    layer it is SDSSL's intermediate term (an intermediate row never sees its own final
    embedding as a negative).
    """
    q = F.normalize(query, dim=-1)
    k = F.normalize(keys, dim=-1)
    n = q.shape[-2]
    half = n // 2
    logits = q @ k.T / temperature  # [..., 2B, M]
    rows = torch.arange(n, device=q.device)
    self_idx = rows + offset
    partner = (rows + half) % n + offset
    mask = torch.zeros(n, k.shape[0], dtype=torch.bool, device=q.device)
    mask[rows, self_idx] = True
    logits = logits.masked_fill(mask, float("-inf"))
    labels = partner.expand(logits.shape[:-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL regression: mean of 2 - 2·cos(prediction, target) over all rows."""
    p = F.normalize(prediction, dim=-1)
    t = F.normalize(target, dim=-1)
    return (2.0 - 2.0 * (p * t).sum(dim=-1)).mean()
