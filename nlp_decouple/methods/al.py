"""Associated Learning (AL; Kao & Chen 2021, Wu et al. ICLR 2022) in the stage architecture.

One AL *layer* per layer group i = 1..L (one :class:`ALStage` each), with two paths:

- input side ``s_i = f_i(s_{i-1})``: the group's blocks; ``group.pool`` gives one vector per text;
- label side ``t_i = g_i(t_{i-1})``, ``t_0 = y``: g_1 embeds the class id into ``method.label_dim``
  (``Embedding`` + activation, as the reference ``EMBAL``), later g_i are ``Linear + activation``;
- bridge ``b_i``: ``Linear(pool_dim, label_dim) + activation`` maps the pooled input side onto t_i;
- decoder ``h_i``: reconstructs t_{i-1} from t_i (``Linear + activation``); h_1 is a plain
  ``Linear(label_dim, C)`` giving class logits.

Local loss of layer i (both terms are means over batch and dimensions, as ``nn.MSELoss``)::

    al_assoc_weight * MSE(b_i(s_i), t_i)  +  al_ae_weight * MSE(h_i(t_i), t_{i-1}.detach())
                                             (i = 1: cross-entropy of h_1(t_1) against y)

By default the bridge target t_i is *not* detached (the ICLR 2022 form: g_i learns from both terms,
also the original Kao & Chen form); ``method.al_detach_target=true`` gives the later code's
``t_i.detach()`` (g_i learns only through its autoencoder term). Every input of a layer is detached at
the layer boundary: s_{i-1} and t_{i-1} both travel in the :class:`Carry` (t in ``carry.extras``),
which :meth:`StagedClassifier.iter_stages` detaches between stages -- the only place a cut is made.
So f_i, g_i, b_i, h_i learn only from layer i's loss, and a stage needs nothing but its carry
(per-group optimizers, the summed backward and a pipeline all work unchanged).

Inference (no labels) needs the decoders of lower layers, which no single stage holds: each stage only
records its bridge output ``b_i(s_i)`` in ``carry.extras["al_bridge"]`` and :func:`al_infer` -- the
method's ``infer`` hook, applied by :meth:`StagedClassifier.run` when ``labels is None`` -- decodes it
down the chain ``h_i -> ... -> h_1``. Stage i's logits are therefore the *shortcut* exit from layer i;
the last stage's are the full AL prediction ``x -> f_1..f_L -> b_L -> h_L -> ... -> h_1``. Evaluation
reports every layer's exit accuracy from these, and the final one is the model's prediction.

Settings and the measurements behind them (label_dim, activation, loss weights, learning rate): see
docs/methods.md, AL settings.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MethodConfig
from ..models import BlockGroup, Carry
from .stages import Stage, StageOutput

LABEL_KEY = "al_t"  # carry.extras: the label-side representation t_i handed to layer i+1 (training)
BRIDGE_KEY = "al_bridge"  # carry.extras: b_i(s_i) at inference, decoded by al_infer

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def associated_loss(bridged: Tensor, target: Tensor, detach_target: bool = False) -> Tensor:
    """``||b_i(s_i) - t_i||²`` as a mean squared error; the target optionally detached."""
    return F.mse_loss(bridged.float(), (target.detach() if detach_target else target).float())


def autoencoder_loss(decoded: Tensor, previous: Tensor) -> Tensor:
    """Layer 1 (``previous`` = class ids): cross-entropy; later layers: MSE against ``t_{i-1}`` (detached)."""
    if previous.dtype in (torch.long, torch.int, torch.int32, torch.int64):
        return F.cross_entropy(decoded.float(), previous)
    return F.mse_loss(decoded.float(), previous.detach().float())


class ALHead(nn.Module):
    """The label side of one AL layer: g_i (encoder of the label), b_i (bridge), h_i (decoder)."""

    def __init__(self, pool_dim: int, label_dim: int, num_classes: int, first: bool, act: str = "tanh",
                 detach_target: bool = False, assoc_weight: float = 1.0, ae_weight: float = 1.0):
        super().__init__()
        self.first = first
        if first:  # t_1 = g_1(y): an embedding of the class id; h_1 gives class logits
            self.g = nn.Sequential(nn.Embedding(num_classes, label_dim), activation(act))
            self.h = nn.Linear(label_dim, num_classes)
        else:
            self.g = nn.Sequential(nn.Linear(label_dim, label_dim), activation(act))
            self.h = nn.Sequential(nn.Linear(label_dim, label_dim), activation(act))
        self.b = nn.Sequential(nn.Linear(pool_dim, label_dim), activation(act))
        self.detach_target = detach_target
        self.assoc_weight, self.ae_weight = assoc_weight, ae_weight

    def forward(self, pooled: Tensor, previous: Tensor) -> tuple[Tensor, Tensor]:
        """Local loss and t_i, from the pooled s_i and ``previous`` (class ids for layer 1, else t_{i-1})."""
        t = self.g(previous)
        assoc = associated_loss(self.b(pooled), t, self.detach_target)
        ae = autoencoder_loss(self.h(t), previous)
        return self.assoc_weight * assoc + self.ae_weight * ae, t

    def decode(self, z: Tensor) -> Tensor:
        """h_i: one step down the label side (layer 1: to class logits)."""
        weight = next(self.h.parameters())
        return self.h(z.to(weight.device, weight.dtype))  # a bridge output from a bf16 autocast stage


class ALStage(Stage):
    """One AL layer: the layer group(s) f_i and the label side :class:`ALHead`.

    Training: reads t_{i-1} from ``carry.extras`` (layer 1: the labels), returns the local loss and puts
    t_i there for the next layer. Inference: puts ``b_i(s_i)`` there; logits come from :func:`al_infer`."""

    head: ALHead

    def forward(self, carry: Carry, labels: Tensor | None = None, return_pooled: bool = False) -> StageOutput:
        carry, pooled, s = self.encode(carry, return_pooled)
        extras = {k: v for k, v in carry.extras.items() if k not in (LABEL_KEY, BRIDGE_KEY)}
        if labels is None:
            extras[BRIDGE_KEY] = self.head.b(s)
            return StageOutput(carry.with_(extras=extras), None, None, pooled)
        if self.head.first:
            previous = labels
        elif LABEL_KEY in carry.extras:
            previous = carry.extras[LABEL_KEY]
        else:
            raise ValueError("an AL layer above the first needs t_{i-1} in carry.extras['al_t']: run the "
                             "stages in order through StagedClassifier.iter_stages (or hand the carry on)")
        loss, t = self.head(s, previous)
        extras[LABEL_KEY] = t
        return StageOutput(carry.with_(extras=extras), loss, None, pooled)


def al_infer(stages: Sequence[nn.Module], outs: list[StageOutput]) -> list[StageOutput]:
    """Inference hook: each stage's exit logits = ``h_1(...h_i(b_i(s_i)))`` (shortcut from layer i)."""
    for i, out in enumerate(outs):
        z = out.carry.extras[BRIDGE_KEY]
        for stage in reversed(stages[: i + 1]):
            z = stage.head.decode(z)
        out.logits = z
    return outs


def build_al(cfg: MethodConfig, groups: list[BlockGroup], num_classes: int) -> list[Stage]:
    return [ALStage([group], ALHead(group.pool_dim, cfg.label_dim, num_classes, first=i == 0,
                                    act=cfg.al_activation, detach_target=cfg.al_detach_target,
                                    assoc_weight=cfg.al_assoc_weight, ae_weight=cfg.al_ae_weight))
            for i, group in enumerate(groups)]
