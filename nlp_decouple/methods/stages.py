"""Stages and local heads: the pieces every training method is assembled from.

A :class:`Stage` is one or more layer groups plus the head that trains them. A method is a list of
stages; a decoupled method detaches the carry between stages, so no gradient crosses a cut and each
stage can step its own optimizer as soon as its loss is ready (or on its own device).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import InfoRegLoss, SupConLoss, gather_batch
from ..losses.memory import FeatureQueue
from ..models import BlockGroup, Carry, Classifier, Standardizer, make_projection


@dataclass
class HeadOutput:
    loss: Tensor | None  # None at inference (no labels)
    logits: Tensor | None = None  # class scores where the head is an exit


class ClassifierHead(nn.Module):
    """Cross-entropy on a classifier; ``detach_input`` trains the classifier alone (SCPL's last head)."""

    def __init__(self, in_dim: int, num_classes: int, detach_input: bool = False, weight: float = 1.0,
                 standardize: bool = False):
        super().__init__()
        # standardize: a non-learned BatchNorm, as a linear probe standardises its features. Contrastive
        # features are nearly collinear early in training; a classifier that reads them raw lags far
        # behind what the features already separate. Only for classifiers on detached input.
        self.norm = Standardizer(in_dim) if standardize else nn.Identity()
        self.classifier = Classifier(in_dim, num_classes)
        self.detach_input, self.weight = detach_input, weight

    def forward(self, pooled: Tensor, labels: Tensor | None) -> HeadOutput:
        logits = self.classifier(self.norm(pooled.detach() if self.detach_input else pooled))
        loss = None if labels is None else self.weight * F.cross_entropy(logits.float(), labels)
        return HeadOutput(loss, logits)


class ContrastiveHead(nn.Module):
    """Projection, L2 normalisation and SupCon: SCPL's local objective."""

    def __init__(self, in_dim: int, projection: str, projection_dim: int | None, temperature: float,
                 divisor: str, gather_features: bool | None = None, queue_size: int = 0,
                 num_prototypes: int = 0, learn_temperature: bool = False):
        super().__init__()
        self.projection = make_projection(projection, in_dim, projection_dim)
        self.loss = SupConLoss(temperature, divisor, learn_temperature)
        # past batches' features: more positives per anchor when a batch has few texts of each class
        self.queue = FeatureQueue(queue_size, projection_dim or in_dim) if queue_size else None
        # learnable class centres in the contrast set: every anchor has a positive, and texts of classes
        # the group has not yet told apart are still pulled to different points (which SupCon alone,
        # once they coincide, no longer does)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, projection_dim or in_dim)) if num_prototypes else None
        # None or True: SupCon over every process's batch (a no-op in one process); False: the local batch
        self.gather_features = gather_features
        self.gather_group = None  # the process group to gather over; None: every process (set by a process pipeline)

    def forward(self, pooled: Tensor, labels: Tensor | None) -> HeadOutput:
        if labels is None:
            return HeadOutput(None)
        z = F.normalize(self.projection(pooled).float(), dim=-1)
        if self.gather_features is not False:
            z, labels = gather_batch(z, labels, self.gather_group)
        centers = F.normalize(self.prototypes, dim=-1) if self.prototypes is not None else None
        if self.queue is None:
            return HeadOutput(self.loss(z, labels, centers=centers))
        loss = self.loss(z, labels, self.queue.contents(), centers)
        if self.training:  # evaluation never writes to the memory
            self.queue.push(z, labels)
        return HeadOutput(loss)


class InfoRegHead(nn.Module):
    """DeInfoReg: projection, information-regularisation loss, plus a lightly weighted classifier.

    By default the classifier reads the projector output *without* detaching it (as the reference
    does), so its small cross-entropy also reaches the block."""

    def __init__(self, in_dim: int, num_classes: int, projection: str, projection_dim: int | None,
                 weights: list[float], ce_weight: float, with_classifier: bool, classifier_detach: bool):
        super().__init__()
        self.projection = make_projection(projection, in_dim, projection_dim)
        out_dim = projection_dim or in_dim
        self.loss = InfoRegLoss(num_classes, tuple(weights))
        self.classifier = ClassifierHead(out_dim, num_classes, classifier_detach, ce_weight) if with_classifier else None

    def forward(self, pooled: Tensor, labels: Tensor | None) -> HeadOutput:
        projected = self.projection(pooled)
        out = self.classifier(projected, labels) if self.classifier is not None else HeadOutput(None)
        if labels is None:
            return out
        loss = self.loss(F.normalize(projected.float(), dim=-1), labels)
        return HeadOutput(loss if out.loss is None else loss + out.loss, out.logits)


class CombinedHead(nn.Module):
    """Sum of several heads' losses; logits from the one head that has them."""

    def __init__(self, *heads: nn.Module):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, pooled: Tensor, labels: Tensor | None) -> HeadOutput:
        outs = [head(pooled, labels) for head in self.heads]
        losses = [o.loss for o in outs if o.loss is not None]
        logits = next((o.logits for o in outs if o.logits is not None), None)
        return HeadOutput(sum(losses) if losses else None, logits)


@dataclass
class StageOutput:
    carry: Carry
    loss: Tensor | None
    logits: Tensor | None
    pooled: list[Tensor] = field(default_factory=list)  # one per group, when asked (layer-wise probes)


class Stage(nn.Module):
    """Layer groups + the head on the last group's pooled vector."""

    def __init__(self, groups: list[BlockGroup], head: nn.Module):
        super().__init__()
        self.groups = nn.ModuleList(groups)
        self.head = head

    def encode(self, carry: Carry, return_pooled: bool = False) -> tuple[Carry, list[Tensor], Tensor]:
        """Run the groups: the carry out, every group's pooled vector (when asked), the last one's."""
        pooled = []
        for group in self.groups:
            carry = group(carry)
            if return_pooled:
                pooled.append(group.pool(carry))
        last = pooled[-1] if return_pooled else self.groups[-1].pool(carry)
        return carry, pooled, last

    def forward(self, carry: Carry, labels: Tensor | None = None, return_pooled: bool = False) -> StageOutput:
        carry, pooled, last = self.encode(carry, return_pooled)
        out = self.head(last, labels)
        return StageOutput(carry, out.loss, out.logits, pooled)


EXIT_FEATURES_KEY = "exit_features"  # carry.extras: the detached pooled vectors of the groups so far


class AllGroupsExitStage(Stage):
    """A stage of SCPL with ``method.exit_input=all_groups``: every stage appends its group's detached pooled
    vector to ``carry.extras`` (so it travels with the carry through every engine, as AL's targets do), and
    the last stage's ``exit`` classifier reads them all, concatenated, instead of the last group's alone.
    No gradient reaches an encoder group through the exit."""

    def __init__(self, groups: list[BlockGroup], head: nn.Module, exit: nn.Module | None = None):
        super().__init__(groups, head)
        self.exit = exit

    def forward(self, carry: Carry, labels: Tensor | None = None, return_pooled: bool = False) -> StageOutput:
        carry, pooled, last = self.encode(carry, return_pooled)
        before = carry.extras.get(EXIT_FEATURES_KEY)
        features = last.detach() if before is None else torch.cat([before, last.detach()], dim=-1)
        out = self.head(last, labels)
        extras = {k: v for k, v in carry.extras.items() if k != EXIT_FEATURES_KEY}
        if self.exit is None:
            return StageOutput(carry.with_(extras={**extras, EXIT_FEATURES_KEY: features}), out.loss, out.logits, pooled)
        exit_out = self.exit(features, labels)
        losses = [loss for loss in (out.loss, exit_out.loss) if loss is not None]
        return StageOutput(carry.with_(extras=extras), sum(losses) if losses else None, exit_out.logits, pooled)
