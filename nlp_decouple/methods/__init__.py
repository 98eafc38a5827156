"""Training methods: each builds the stages of a model and says where gradients stop.

``decoupled`` methods detach the carry between stages (one stage per layer group); ``bp`` is one stage
holding every group, so gradients flow end to end and the cuts are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..config import MethodConfig
from ..registry import METHODS as REGISTERED
from ..registry import MethodInfo
from ..models import BlockGroup, EmbeddingBlock, HubEmbeddingBlock
from .al import ALHead, ALStage, al_infer, build_al
from .stages import AllGroupsExitStage, ClassifierHead, CombinedHead, ContrastiveHead, HeadOutput, InfoRegHead, Stage, StageOutput


@dataclass(frozen=True)
class Method:
    info: MethodInfo  # name, display name, decoupled, has exits: nlp_decouple.registry
    build: Callable[[MethodConfig, list[BlockGroup], int], list[Stage]]
    # optional inference hook, applied by StagedClassifier.run when labels is None: (stages, outputs) ->
    # outputs, e.g. to fill each stage's logits from decoders that live in other stages (AL)
    infer: Callable[[Sequence[Stage], list[StageOutput]], list[StageOutput]] | None = None


def _bp(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    return [Stage(groups, ClassifierHead(groups[-1].pool_dim, num_classes))]


def _scpl(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    def contrastive(group: BlockGroup) -> ContrastiveHead:
        return ContrastiveHead(group.pool_dim, cfg.projection, cfg.projection_dim, cfg.temperature,
                               cfg.supcon_divisor, cfg.gather_features, cfg.supcon_queue,
                               num_classes if cfg.supcon_prototypes else 0, cfg.learn_temperature)

    def exit_head(in_dim: int) -> ClassifierHead:
        # its initial weights come from a fork of the RNG, so the encoder and its heads draw the same random
        # numbers (initial weights, dropout) whatever the exit reads: two exit inputs train the same encoder
        with torch.random.fork_rng(devices=[]):
            return ClassifierHead(in_dim, num_classes, detach_input=True, standardize=cfg.classifier_standardize)

    heads = [contrastive(g) for g in groups]
    if cfg.exit_input == "all_groups":
        exit = exit_head(sum(g.pool_dim for g in groups))
        return [AllGroupsExitStage([g], h, exit if k == len(groups) - 1 else None)
                for k, (g, h) in enumerate(zip(groups, heads))]
    # the classifier learns on the detached last group: it never trains the encoder
    return [Stage([g], h) for g, h in zip(groups[:-1], heads)] + [
        Stage([groups[-1]], CombinedHead(heads[-1], exit_head(groups[-1].pool_dim)))]


def _early_exit(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    return [Stage([g], ClassifierHead(g.pool_dim, num_classes)) for g in groups]


def _deinforeg(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    def head(k: int, group: BlockGroup) -> InfoRegHead:
        # the reference gives the embedding block the local loss but no classifier
        embedding_only = len(group.blocks) == 1 and isinstance(group.blocks[0], (EmbeddingBlock, HubEmbeddingBlock))
        return InfoRegHead(group.pool_dim, num_classes, cfg.projection, cfg.projection_dim,
                           cfg.inforeg_weights, cfg.ce_weight, with_classifier=not embedding_only or len(groups) == 1,
                           classifier_detach=cfg.classifier_detach)

    return [Stage([g], head(k, g)) for k, g in enumerate(groups)]


_BUILDERS = {"bp": (_bp, None), "scpl": (_scpl, None), "early_exit": (_early_exit, None),
             "deinforeg": (_deinforeg, None), "al": (build_al, al_infer)}
METHODS: dict[str, Method] = {name: Method(info, *_BUILDERS[name]) for name, info in REGISTERED.items()}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "get_method", "ALHead", "ALStage", "AllGroupsExitStage", "ClassifierHead", "CombinedHead", "ContrastiveHead",
           "HeadOutput", "InfoRegHead", "Stage", "StageOutput"]
