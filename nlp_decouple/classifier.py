"""The model a method trains: its stages in order, with one inference path for every method."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

from torch import Tensor, nn

from .config import Config, group_sizes
from .methods import Stage, StageOutput, get_method
from .models import Carry, build_blocks, cut_into_groups


class StagedClassifier(nn.Module):
    def __init__(self, stages: list[Stage], decoupled: bool,
                 infer: Callable[[Sequence[Stage], list[StageOutput]], list[StageOutput]] | None = None):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.decoupled = decoupled
        self.infer = infer  # the method's inference hook (Method.infer), applied by run() without labels

    @classmethod
    def from_config(cls, cfg: Config, vocab_size: int, pad_id: int, num_classes: int, max_length: int,
                    hub_config: dict | None = None):
        """``hub_config``: rebuild a saved pretrained encoder from its Hub config (no download)."""
        blocks = build_blocks(cfg.model, vocab_size, pad_id, max_length, hub_config)
        groups = cut_into_groups(blocks, group_sizes(cfg))
        method = get_method(cfg.method.name)
        return cls(method.build(cfg.method, groups, num_classes), method.info.decoupled, method.infer)

    @property
    def embedding(self) -> nn.Embedding:
        return self.stages[0].groups[0].blocks[0].embed

    def stage_ends(self) -> list[int]:
        """Global index of each stage's last group: where that stage's exit (if any) reads."""
        ends, total = [], 0
        for stage in self.stages:
            total += len(stage.groups)
            ends.append(total - 1)
        return ends

    def groups(self) -> list[nn.Module]:
        return [g for stage in self.stages for g in stage.groups]

    def iter_stages(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None,
                    return_pooled: bool = False, stages: list[nn.Module] | None = None
                    ) -> Iterator[StageOutput]:
        """Run the stages in order, yielding each output as soon as it exists (so a caller can
        backpropagate a stage's local loss and free its graph before the next stage runs).

        The carry is detached between stages of a decoupled method: that is the cut. ``stages`` may
        replace the own stages by wrapped twins (DDP), in the same order."""
        carry = Carry(input_ids, attention_mask.bool())
        for k, stage in enumerate(stages or self.stages):
            if self.decoupled and k > 0:
                carry = carry.detach()
            out = stage(carry, labels, return_pooled)
            carry = out.carry
            yield out

    def run(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None,
            return_pooled: bool = False) -> list[StageOutput]:
        """All stage outputs. Without labels (inference) the method's ``infer`` hook, if any, then
        completes them, e.g. AL decodes each stage's bridge output into that stage's exit logits
        through the decoders of the stages below it (read-only: no carry is cut or changed here)."""
        outs = list(self.iter_stages(input_ids, attention_mask, labels, return_pooled))
        if labels is None and self.infer is not None:
            outs = self.infer(list(self.stages), outs)
        return outs

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Class logits of the final exit."""
        return self.run(input_ids, attention_mask)[-1].logits


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
