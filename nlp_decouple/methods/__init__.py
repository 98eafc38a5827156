"""Training methods: each builds the stages of a model and says where gradients stop.

``decoupled`` methods detach the carry between stages (one stage per layer group); ``bp`` is one stage
holding every group, so gradients flow end to end and the cuts are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..config import MethodConfig
from ..models import BlockGroup, EmbeddingBlock
from .al import ALHead, ALStage, al_infer, build_al
from .stages import ClassifierHead, CombinedHead, ContrastiveHead, HeadOutput, InfoRegHead, Stage, StageOutput


@dataclass(frozen=True)
class Method:
    name: str
    decoupled: bool
    build: Callable[[MethodConfig, list[BlockGroup], int], list[Stage]]
    summary: str
    # optional inference hook, applied by StagedClassifier.run when labels is None: (stages, outputs) ->
    # outputs, e.g. to fill each stage's logits from decoders that live in other stages (AL)
    infer: Callable[[Sequence[Stage], list[StageOutput]], list[StageOutput]] | None = None


def _bp(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    return [Stage(groups, ClassifierHead(groups[-1].pool_dim, num_classes))]


def _scpl(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    def contrastive(group: BlockGroup) -> ContrastiveHead:
        return ContrastiveHead(group.pool_dim, cfg.projection, cfg.projection_dim, cfg.temperature,
                               cfg.supcon_divisor)

    stages = [Stage([g], contrastive(g)) for g in groups[:-1]]
    last = groups[-1]
    # the classifier learns on the detached last group: it never trains the encoder
    head = CombinedHead(contrastive(last), ClassifierHead(last.pool_dim, num_classes, detach_input=True,
                                                                 standardize=cfg.classifier_standardize))
    return stages + [Stage([last], head)]


def _early_exit(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    return [Stage([g], ClassifierHead(g.pool_dim, num_classes)) for g in groups]


def _deinforeg(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    def head(k: int, group: BlockGroup) -> InfoRegHead:
        # the reference gives the embedding block the local loss but no classifier
        embedding_only = len(group.blocks) == 1 and isinstance(group.blocks[0], EmbeddingBlock)
        return InfoRegHead(group.pool_dim, num_classes, cfg.projection, cfg.projection_dim,
                           cfg.inforeg_weights, cfg.ce_weight, with_classifier=not embedding_only or len(groups) == 1,
                           classifier_detach=cfg.classifier_detach)

    return [Stage([g], head(k, g)) for k, g in enumerate(groups)]


METHODS: dict[str, Method] = {
    "bp": Method("bp", False, _bp, "end-to-end backpropagation through all groups"),
    "scpl": Method("scpl", True, _scpl, "SupCon per group; classifier on the detached last group"),
    "early_exit": Method("early_exit", True, _early_exit, "a classifier with cross-entropy per group"),
    "deinforeg": Method("deinforeg", True, _deinforeg,
                        "invariance/variance/covariance per group + 0.001 x cross-entropy"),
    "al": Method("al", True, build_al, "associated learning: bridge + label autoencoder per group; "
                 "inference decodes the label side down to layer 1", infer=al_infer),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method", "ALHead", "ALStage", "ClassifierHead", "CombinedHead", "ContrastiveHead",
           "HeadOutput", "InfoRegHead", "Stage", "StageOutput"]
