"""What ``tune`` searches: a default space per method and a small command-line grammar for changing it.

    space.KEY=log:LOW:HIGH          float, log-uniform          space.train.lr=log:1e-4:1e-2
    space.KEY=float:LOW:HIGH[:log]  float, uniform (or log)     space.model.dropout=float:0:0.3
    space.KEY=int:LOW:HIGH[:log]    integer                     space.train.batch_size=int:32:256:log
    space.KEY=choice:A,B,...        one of the values (YAML)    space.method.projection=choice:mlp,mlp_bn
    space.KEY=off                   not searched: the recipe's value

``space.KEY=...`` applies to every tuned method; ``space.METHOD.KEY=...`` (e.g.
``space.scpl.method.temperature=...``) to that method only, and wins over the former. A key fixed with a
plain ``KEY=value`` leaves the default space.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import UserError
from ..registry import METHODS

GRAMMAR = "log:LOW:HIGH, float:LOW:HIGH[:log], int:LOW:HIGH[:log], choice:A,B,... or off"

# Three searched keys per method: the learning rate over one range for all (wide enough that no method's pick
# sits at its edge) and weight decay, then one setting of the method's own; BP and Early Exit have none and
# search dropout, which the others keep at the recipe's value. Equal dimensions keep equal budgets comparable.
_COMMON = {"train.lr": "log:1e-4:3e-2", "train.weight_decay": "float:0.0:0.1"}
DEFAULT_SPACES: dict[str, dict[str, str]] = {
    "bp": {**_COMMON, "model.dropout": "float:0.0:0.3"},
    "scpl": {**_COMMON, "method.temperature": "log:0.03:0.5"},
    "early_exit": {**_COMMON, "model.dropout": "float:0.0:0.3"},
    "deinforeg": {**_COMMON, "method.ce_weight": "log:1e-4:1e-1"},
    "al": {**_COMMON, "method.label_dim": "choice:64,128,256"},
}


@dataclass(frozen=True)
class Dim:
    """One searched config key."""

    key: str
    kind: str  # "float" | "int" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def spec(self) -> str:
        """The grammar text (stored in the study, shown in a tuned recipe's provenance)."""
        if self.kind == "choice":
            return "choice:" + ",".join(format_value(c) for c in self.choices)
        bounds = f"{format_value(self.low)}:{format_value(self.high)}"
        if self.kind == "float" and self.log:
            return f"log:{bounds}"
        return f"{self.kind}:{bounds}" + (":log" if self.log else "")

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def extremes(self) -> list:
        """Values that, each alone, must give a valid config (checked before anything trains)."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


def format_value(value: Any) -> str:
    """A value as ``key=value`` text that the config reads back exactly (floats by repr)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _scalar(text: str) -> Any:
    """A choice read as YAML; ``1e-3`` too is a number (YAML 1.1 would keep it text)."""
    if _FLOAT.fullmatch(text):
        return float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_dim(key: str, text: str) -> Dim | None:
    """``space.KEY=TEXT`` as a :class:`Dim`, or None for ``off``."""
    where = f"space.{key}={text}"
    kind, _, rest = text.strip().partition(":")
    if kind == "off" and not rest:
        return None
    if kind == "choice":
        choices = tuple(_scalar(c.strip()) for c in rest.split(",") if c.strip())
        if not choices or len(set(map(repr, choices))) != len(choices):
            raise UserError(f"{where}: give distinct values after choice:, e.g. space.{key}=choice:mlp,mlp_bn")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise UserError(f"{where}: choices must be plain values (numbers, true/false, null or text)")
        return Dim(key, "choice", choices=choices)
    if kind not in ("log", "float", "int"):
        raise UserError(f"{where}: unknown form {kind!r}; write {GRAMMAR}, e.g. space.train.lr=log:1e-4:1e-2")
    parts = rest.split(":")
    log = kind == "log"
    if kind != "log" and len(parts) == 3 and parts[2] == "log":
        log, parts = True, parts[:2]
    if len(parts) != 2:
        raise UserError(f"{where}: write {kind}:LOW:HIGH" + ("" if kind == "log" else "[:log]") + f", e.g. space.{key}="
                        + ("int:32:256:log" if kind == "int" else f"{kind}:0.05:0.5"))
    number = int if kind == "int" else float
    try:
        low, high = number(parts[0]), number(parts[1])
    except ValueError:
        raise UserError(f"{where}: LOW and HIGH must be {'integers' if kind == 'int' else 'numbers'}, "
                        f"e.g. space.{key}={kind}:" + ("32:256" if kind == "int" else "0.05:0.5")) from None
    if not low < high:
        raise UserError(f"{where}: LOW must be below HIGH")
    if log and low <= 0:
        raise UserError(f"{where}: a log scale needs LOW > 0")
    return Dim(key, "float" if kind == "log" else kind, low, high, log)

PER_PROCESS = ("train.mixed_precision", "train.cpu")  # set once per process by Accelerate: never searched


def build_spaces(methods: list[str], specs: list[tuple[str, str]], fixed: set[str]) -> dict[str, dict[str, Dim]]:
    """Each method's space: its default minus the ``fixed`` keys, then ``specs`` ((``KEY`` or
    ``METHOD.KEY``, grammar text) pairs) applied, method-scoped last."""
    scoped = [(k.partition(".")[0], k.partition(".")[2], t) if k.partition(".")[0] in METHODS else (None, k, t)
              for k, t in specs]
    for scope, key, text in scoped:
        if not key:
            raise UserError(f"space.{scope}={text}: name a config key, e.g. space.{scope}.train.lr=log:1e-4:1e-2")
        if key in PER_PROCESS:
            raise UserError(f"space.{key}: the trials share one process, whose Accelerate state keeps the first "
                            f"trial's {key}; fix it for every trial with {key}=... instead")
        if key in fixed:
            raise UserError(f"{key} is both fixed ({key}=...) and searched (space.{key}=...): drop one of them")
        if scope is not None and scope not in methods:
            raise UserError(f"space.{scope}.{key}: {scope} is not among methods={','.join(methods)}")
    spaces = {}
    for method in methods:
        dims: dict[str, Dim | None] = {k: parse_dim(k, t) for k, t in DEFAULT_SPACES[method].items() if k not in fixed}
        for scope in (None, method):
            dims.update({k: parse_dim(k, t) for s, k, t in scoped if s == scope})
        spaces[method] = {k: d for k, d in dims.items() if d is not None}
        if not spaces[method]:
            raise UserError(f"nothing left to tune for {method}: give a space.KEY=... or drop {method} from methods=")
    return spaces
