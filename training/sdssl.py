"""SDSSL assembled from parts: backbone, per-exit heads, EMA teacher and the base loss.

Intermediate exit l on one view learns the *final* layer's target of the other view, under the
same base loss:  L = L_final + lambda(t) * mean_l L_mid(l)  [+ predictor term].
With ``distill=False`` there are no intermediate heads and lambda is ignored: the baseline.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from training import distributed
from training.backbone import build_backbone
from training.config import Config
from training.exits import exit_features
from training.heads import build_predictor, build_projector
from training.losses import byol_loss, info_nce, nt_xent
from training.methods import get_method
from training.stacked_heads import StackedMLP


class SDSSL(nn.Module):
    """Student (backbone + heads per exit depth) and, for MoCo v3 / BYOL, a momentum teacher."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.method = get_method(cfg.train.method)
        depth, dim, heads = cfg.model.depth, cfg.model.embed_dim, cfg.heads
        reference = heads.reference_bn
        self.per_view = reference and self.method.per_view_heads
        pred_last_bn = reference and self.method.predictor_last_bn
        self.backbone = build_backbone(cfg.model)
        # Exit depths that carry heads: every depth with distillation, else only the last.
        self.head_depths = list(range(1, depth + 1)) if cfg.train.distill else [depth]
        stacked = heads.stacked and len(self.head_depths) > 1
        # The intermediate projectors (and every predictor) as one StackedMLP when stacked; the
        # final projector stays separate (its own width, and the teacher copies it).
        self.mid_projectors = (
            StackedMLP(len(self.head_depths) - 1, 3, dim, heads.mid_proj_hidden_dim,
                       heads.out_dim, self.method.projector_last_bn)
            if stacked else None
        )  # fmt: skip
        self.projectors = nn.ModuleList(
            build_projector(
                dim,
                heads.proj_hidden_dim if d == depth else heads.mid_proj_hidden_dim,
                heads.out_dim,
                self.method.projector_last_bn,
            )
            for d in (self.head_depths[-1:] if stacked else self.head_depths)
        )
        self.predictors: nn.Module | None = None
        if self.method.predictor:
            self.predictors = (
                StackedMLP(len(self.head_depths), 2, heads.out_dim, heads.pred_hidden_dim,
                           heads.out_dim, pred_last_bn)
                if stacked else
                nn.ModuleList(build_predictor(heads.out_dim, heads.pred_hidden_dim, pred_last_bn)
                              for _ in self.head_depths)
            )  # fmt: skip
        self.teacher: nn.ModuleDict | None = None
        if self.method.momentum_teacher:
            self.teacher = nn.ModuleDict(
                {
                    "backbone": copy.deepcopy(self.backbone),
                    "projector": copy.deepcopy(self.projectors[-1]),
                }
            )
            self.teacher.requires_grad_(False)

    @property
    def eval_backbone(self) -> nn.Module:
        """The backbone whose embeddings are evaluated and exported (teacher when there is one)."""
        return self.teacher["backbone"] if self.teacher is not None else self.backbone

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, distill_weight: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss for one batch of two views, and its parts for logging."""
        b = view1.shape[0]
        images = torch.cat([view1, view2])
        feats = exit_features(self.backbone, images, self.head_depths)  # [H, 2B, D]
        if self.mid_projectors is not None:
            last = self._heads(self.projectors[-1], feats[-1], b)
            z = torch.cat([self._heads(self.mid_projectors, feats[:-1], b), last[None]])
        else:
            z = torch.stack([self._heads(proj, f, b) for proj, f in zip(self.projectors, feats,
                                                                         strict=True)])  # fmt: skip
        if self.method.momentum_teacher:
            return self._teacher_loss(images, z, b, distill_weight)
        return self._in_batch_loss(z, distill_weight)

    def _heads(self, head: nn.Module, x: torch.Tensor, b: int) -> torch.Tensor:
        """A head on both views' rows ``[2B, ·]``: one batch, or each view on its own (its BN
        statistics from that view only, as MoCo v3's and BYOL's reference code runs them)."""
        if not self.per_view:
            return head(x)
        return torch.cat([head(x[..., :b, :]), head(x[..., b:, :])], dim=-2)

    def _predict(self, z: torch.Tensor, b: int) -> torch.Tensor:
        """Every exit's predictor on its projections ``[H, 2B, C]``."""
        assert self.predictors is not None
        if isinstance(self.predictors, StackedMLP):
            return self._heads(self.predictors, z, b)
        return torch.stack(
            [self._heads(pred, zi, b) for pred, zi in zip(self.predictors, z, strict=True)]
        )

    def _in_batch_loss(self, z: torch.Tensor, lam: float) -> tuple[torch.Tensor, dict[str, float]]:
        """SimCLR: both views' final projections are the keys, negatives gathered across ranks."""
        tau = self.cfg.train.temperature
        offset = distributed.rank() * z.shape[1]
        keys = distributed.gather_with_local_grad(z[-1])
        loss_final = nt_xent(z[-1], keys, tau, offset)
        loss = loss_final
        logs = {"loss_final": loss_final.item()}
        if len(self.head_depths) > 1:
            loss_mid = nt_xent(z[:-1], keys.detach(), tau, offset)
            loss = loss + lam * loss_mid
            logs["loss_mid"] = loss_mid.item()
        logs["loss"] = loss.item()
        return loss, logs

    def _pair_loss(self, query: torch.Tensor, target_local: torch.Tensor) -> torch.Tensor:
        if self.method.contrastive:
            keys = distributed.gather(target_local)
            offset = distributed.rank() * target_local.shape[0]
            return info_nce(query, keys, self.cfg.train.temperature, offset)
        return byol_loss(query, target_local.expand_as(query))

    def _teacher_loss(
        self, images: torch.Tensor, z: torch.Tensor, b: int, lam: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """MoCo v3 / BYOL: predictions of one view regress the teacher's final of the other."""
        assert self.teacher is not None and self.predictors is not None
        with torch.no_grad():
            depth = self.cfg.model.depth
            t_feat = exit_features(self.teacher["backbone"], images, [depth])[0]
            target = self._heads(self.teacher["projector"], t_feat, b)
        t1, t2 = target[:b], target[b:]
        p = self._predict(z, b)

        def cross(pred: torch.Tensor) -> torch.Tensor:  # view-1 rows -> t2, view-2 rows -> t1
            return self._pair_loss(pred[..., :b, :], t2) + self._pair_loss(pred[..., b:, :], t1)

        loss_final = cross(p[-1])
        loss = loss_final
        logs = {"loss_final": loss_final.item()}
        if len(self.head_depths) > 1:
            loss_mid = cross(p[:-1])
            loss = loss + lam * loss_mid
            logs["loss_mid"] = loss_mid.item()
            if self.cfg.train.predictor_term:
                # SDSSL's predictor term: every predictor on stop-gradient projections, at full
                # weight (summed over exits), so predictors train even while lambda is small.
                p_sg = self._predict(z.detach(), b)
                loss_pred = len(self.head_depths) * cross(p_sg)
                loss = loss + loss_pred
                logs["loss_pred"] = loss_pred.item()
        logs["loss"] = loss.item()
        return loss, logs

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA of the student's backbone and final projector into the teacher."""
        if self.teacher is None:
            return
        pairs = [
            (self.backbone, self.teacher["backbone"]),
            (self.projectors[-1], self.teacher["projector"]),
        ]
        for student, teacher in pairs:
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)
