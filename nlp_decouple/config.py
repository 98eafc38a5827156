"""Typed run configuration: dataclasses, YAML recipes and ``key=value`` overrides.

Every value is checked at start-up; a bad one raises :class:`UserError` naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import UserError
from .registry import DATASETS, METHODS, known_names


@dataclass
class DataConfig:
    name: str = "synthetic"  # registry name (see nlp_decouple.registry) or "custom"
    path: str | None = None  # local copy: Hub-layout folder, save_to_disk folder, or CSV/JSON/parquet file(s)
    test_path: str | None = None  # optional separate test file when `path` is a single file
    text_fields: list[str] | None = None  # columns joined with a space; default from the registry
    label_field: str | None = None
    label_offset: int = 0  # added to integer labels, e.g. -1 for the classic 1-based AG News CSV
    max_length: int | None = None  # tokens; default from the registry
    val_fraction: float = 0.1  # carved from train, stratified, when the source has no validation split
    test_fraction: float = 0.2  # only used when the source has no test split
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    label_noise: float = 0.0  # fraction of training labels replaced by another class
    synthetic_train_size: int = 4000
    synthetic_test_size: int = 1000
    num_workers: int = 0
    # training batches: random, or groups of samples_per_class texts of one class (nlp_decouple.data.sampling):
    # grouped keeps class frequencies and shows each text once an epoch; class_balanced draws classes uniformly
    sampler: Literal["random", "grouped", "class_balanced"] = "random"
    samples_per_class: int = 4


@dataclass
class TokenizerConfig:
    name: str | None = None  # Hub id or local directory, loaded with AutoTokenizer
    train: Literal["wordpiece", "word"] | None = None  # or train one on the training split
    vocab_size: int = 30000
    min_frequency: int = 1
    lowercase: bool = True
    trust_remote_code: bool = False


@dataclass
class ModelConfig:
    encoder: Literal["transformer", "lstm", "pretrained"] = "transformer"
    # encoder blocks after the embedding block; null: 3 (transformer, lstm) or every layer of `pretrained`
    num_layers: int | None = None
    pretrained: str | None = None  # encoder=pretrained: Hub id or local directory (BERT layout, DistilBERT, DeBERTa-v2/v3, MPNet, ModernBERT)
    hidden_size: int = 300  # Transformer d_model / LSTM units per direction
    embed_dim: int | None = None  # default: hidden_size
    num_heads: int = 6
    ffn_size: int = 300
    dropout: float = 0.1
    positional: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    norm: Literal["pre", "post"] = "post"
    pooling: Literal["mean", "cls"] = "mean"  # Transformer blocks
    lstm_pooling: Literal["last", "mean"] = "last"
    lstm_state_handoff: bool = False  # reference SCPL: an LSTM block starts from the previous final (h, c)
    groups: int | list[int] | None = None  # layer groups over the num_layers + 1 blocks; None = one block each
    word_vectors: str | None = None  # GloVe-format text file
    freeze_embeddings: bool = False  # pretrained: the whole Hub embedding module

    def __post_init__(self):
        if self.num_layers is None and self.encoder != "pretrained":
            self.num_layers = 3  # a pretrained model's count is known once it is loaded (models.pretrained)


@dataclass
class MethodConfig:
    name: Literal[tuple(METHODS)] = "bp"  # see nlp_decouple.registry
    backward: Literal["per_group", "sum"] = "per_group"  # decoupled methods only
    temperature: float = 0.1
    learn_temperature: bool = False  # SCPL: tau a trained parameter per group, starting at `temperature`
    projection: Literal["identity", "linear", "mlp", "mlp_bn"] = "identity"
    projection_dim: int | None = None  # default: the group's pooled size
    supcon_divisor: Literal["positives", "positives_plus_one"] = "positives"
    supcon_queue: int = 0  # SCPL: past features (and labels) kept as extra positives/negatives; 0 = off
    supcon_prototypes: bool = False  # SCPL: a learnable centre per class joins each group's contrast set
    ce_weight: float = 0.001  # DeInfoReg's classifier weight
    inforeg_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    classifier_standardize: bool = True  # SCPL: standardise the detached features its classifier reads
    classifier_detach: bool = False  # DeInfoReg: detach the projector output before its classifier
    label_dim: int = 128  # AL
    al_activation: Literal["tanh", "relu", "sigmoid"] = "tanh"
    al_detach_target: bool = False  # AL: bridge target t.detach() (later code); default ICLR form
    al_assoc_weight: float = 1.0
    al_ae_weight: float = 1.0
    gather_features: bool | None = None  # SupCon over every process's batch; None: on when several processes


@dataclass
class TrainConfig:
    epochs: int = 3  # the cap when early_stopping_patience is set
    early_stopping_patience: int | None = None  # stop after this many epochs without a validation gain; null: off
    batch_size: int = 128
    eval_batch_size: int = 256
    lr: float = 1e-3
    head_lr: float | None = None  # heads (projections, classifiers, AL's label side); null: train.lr
    weight_decay: float = 0.0  # never on biases and normalisation weights (see nlp_decouple.optim)
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    max_steps: int | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers, e.g. [tensorboard]
    num_processes: int | None = None  # refuse to run when the launched world size differs
    cpu: bool = False
    deterministic: bool = False
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row
    progress: bool = True
    # layer groups as pipeline stages: false | true = threads (a worker thread and device each, one process) |
    # processes (a contiguous block of stages per rank of accelerate launch / torchrun; decoupled methods) |
    # torch_gpipe, torch_1f1b (bp over the same ranks on torch.distributed.pipelining's schedules)
    pipeline: bool | Literal["threads", "processes", "torch_gpipe", "torch_1f1b"] = False
    stages_per_rank: list[int] | None = None  # pipeline=processes: stages of rank 0, 1, ...; null: balanced
    timeout_s: float = 600.0  # seconds a wait on another process may last before the run fails
    devices: str | list[str] = "auto"  # pipeline placement: auto | cpu | [cuda:0, cuda:1, ...] | [cpu, cpu]
    micro_batches: int = 4  # pipelined bp (threads, torch_gpipe, torch_1f1b): micro-batches per batch
    queue_size: int = 2  # pipeline: batches a stage may run ahead of the next
    threads_per_stage: int | None = None  # pipeline on CPU: intra-op threads per worker (default: split evenly)
    save_every: int | None = None  # checkpoint every N steps (and always at each epoch end)
    keep_checkpoints: int = 2  # newest complete checkpoints kept
    resume: str | None = None  # "auto": continue from the newest complete checkpoint of this run; or a path
    resume_other_versions: bool = False  # resume a checkpoint made by other code or on other data


TORCH_PIPELINES = ("torch_gpipe", "torch_1f1b")  # train.pipeline values for bp on torch.distributed.pipelining


def over_processes(t: TrainConfig) -> bool:
    """Whether train.pipeline spreads the model over the processes of a launch (each rank its own block)."""
    return t.pipeline == "processes" or t.pipeline in TORCH_PIPELINES


@dataclass
class EvalConfig:
    every_group: bool = True  # layer-wise accuracies each epoch (exits or linear probes)
    probe_samples: int = 2000  # probe set: training texts (seeded, stratified draw) for linear probes and refresh
    probe_max_iter: int = 500
    test: bool = True  # score the test split each epoch; false while tuning (test is never read)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs"
    run_name: str | None = None  # default: {data}-{encoder}-{method}-seed{seed}

    def run_dir(self) -> Path:
        name = self.run_name or (
            f"{self.data.name}-{self.model.encoder}-{self.method.name}-seed{self.train.seed}"
        )
        return Path(self.output_dir) / name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building from plain data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml_scalar(text: str) -> Any:
    """A command-line item read as YAML (numbers, null, true), else kept as the plain string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked against type ``tp``; raise UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        choices = [str(a) for a in typing.get_args(tp)]
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"{key}: {value!r} is not one of {', '.join(choices)}{hint}")
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(tp)
            return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str) and value.strip():  # key=a,b (or key=a) on the command line
            return _coerce([_yaml_scalar(v) for v in value.split(",")], tp, key)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            return float(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(names)}"
            raise UserError(f"unknown key {full!r}: {hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} must look like key=value, e.g. train.epochs=3")
    return key.strip(), (_yaml_scalar(value) if value.strip() else None)


def config_from_dict(raw: dict) -> Config:
    """A validated Config from plain data (e.g. a saved config.yaml); keys it lacks take their defaults."""
    cfg = _build(Config, raw, "")
    if cfg.model.encoder == "pretrained" and not (cfg.tokenizer.name or cfg.tokenizer.train):
        cfg.tokenizer.name = cfg.model.pretrained  # the model's own tokenizer by default
    validate(cfg)
    return cfg


def load_config(recipe: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or none), apply ``key=value`` overrides, validate and return the config."""
    raw: dict = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise UserError(f"recipe {str(path)!r} not found: give the path of a YAML file, e.g. recipes/quickstart.yaml")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" line {where.line + 1}" if where is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UserError(f"recipe {str(path)!r}{line}: malformed YAML ({problem}); fix the syntax") from None
        if not isinstance(raw, dict):
            raise UserError(f"recipe {str(path)!r}: expected a mapping of sections, got {type(raw).__name__}")
    per_method = raw.pop(PER_METHOD, None)
    given = set()
    for text in overrides:
        key, value = parse_override(text)
        given.add(key)
        _set_dotted(raw, key, value)
        # tokenizer.name and tokenizer.train exclude each other: the one given last replaces the other
        if key in ("tokenizer.name", "tokenizer.train") and value is not None:
            other = "train" if key == "tokenizer.name" else "name"
            if isinstance(raw.get("tokenizer"), dict):
                raw["tokenizer"].pop(other, None)
    _apply_per_method(raw, per_method, given)
    return config_from_dict(raw)


PER_METHOD = "per_method"  # a recipe's settings for one method, e.g. per_method: {scpl: {train.lr: 1.0e-2}}


def _apply_per_method(raw: dict, per_method: Any, given: set[str]) -> None:
    """The recipe's ``per_method`` settings of the chosen method, between the recipe's own and the command
    line's: a ``key=value`` override still wins."""
    if per_method is None:
        return
    if not isinstance(per_method, dict) or not all(isinstance(v, dict) for v in per_method.values()):
        raise UserError(f"{PER_METHOD}: expected a mapping of method names to dotted settings, e.g. "
                        f"{PER_METHOD}: {{scpl: {{train.lr: 1.0e-2}}}}")
    for name in per_method:
        if name not in METHODS:
            close = difflib.get_close_matches(str(name), list(METHODS), n=1)
            raise UserError(f"{PER_METHOD}.{name}: unknown method" + (f" (did you mean {close[0]!r}?)" if close else
                            f"; use one of {', '.join(METHODS)}"))
    section = raw.get("method")
    method = section.get("name", MethodConfig.name) if isinstance(section, dict) else MethodConfig.name
    for dotted, value in (per_method.get(method) or {}).items():
        if dotted not in given:
            _set_dotted(raw, str(dotted), value)


def num_blocks(cfg: Config) -> int:
    if cfg.model.num_layers is None:  # a programming error: building the model resolves it
        raise ValueError("model.num_layers=null (all of a pretrained model's layers) is known once the model is built")
    return cfg.model.num_layers + 1  # the embedding block, then the encoder blocks


def group_sizes(cfg: Config) -> list[int]:
    """How many consecutive blocks each layer group holds."""
    n, groups = num_blocks(cfg), cfg.model.groups
    if groups is None:
        return [1] * n
    if isinstance(groups, int):
        base, extra = divmod(n, groups)
        return [base + (1 if i < extra else 0) for i in range(groups)]
    return list(groups)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_groups(m: ModelConfig) -> None:
    """model.groups against the block count; with a pretrained model's layer count still unknown
    (num_layers null), only the sizes: the builder calls this again once the model is loaded."""
    if m.num_layers is None:
        _check(not isinstance(m.groups, int) or m.groups >= 1, f"model.groups: {m.groups} must be >= 1")
        _check(not isinstance(m.groups, list) or all(g > 0 for g in m.groups),
               f"model.groups: {m.groups} must be positive sizes")
        return
    n = m.num_layers + 1
    if isinstance(m.groups, int):
        _check(1 <= m.groups <= n, f"model.groups: {m.groups} groups cannot be cut from {n} blocks "
               f"(embedding + model.num_layers={m.num_layers}); use 1..{n}")
    elif isinstance(m.groups, list):
        _check(all(g > 0 for g in m.groups) and sum(m.groups) == n,
               f"model.groups: {m.groups} must be positive sizes summing to {n} "
               f"(the embedding block + model.num_layers={m.num_layers}), e.g. {[1] * n}")


def validate(cfg: Config) -> None:
    d, m, t, meth = cfg.data, cfg.model, cfg.train, cfg.method
    _check(0.0 < d.val_fraction < 1.0, f"data.val_fraction: {d.val_fraction} must be in (0, 1)")
    _check(0.0 < d.test_fraction < 1.0, f"data.test_fraction: {d.test_fraction} must be in (0, 1)")
    _check(0.0 <= d.label_noise < 1.0, f"data.label_noise: {d.label_noise} must be in [0, 1)")
    for key in ("max_length", "max_train_samples", "max_eval_samples"):
        value = getattr(d, key)
        _check(value is None or value > 0, f"data.{key}: {value} must be a positive integer or null")
    _check(d.synthetic_train_size >= 20 and d.synthetic_test_size >= 10,
           "data.synthetic_train_size/synthetic_test_size: too small (use at least 20 and 10)")
    _check(d.num_workers >= 0, f"data.num_workers: {d.num_workers} must be >= 0")
    if d.sampler != "random":
        _check(d.samples_per_class >= 2, f"data.samples_per_class: {d.samples_per_class} must be >= 2 "
               "(a text needs another of its class in the batch)")
        _check(cfg.train.batch_size % d.samples_per_class == 0, f"data.samples_per_class={d.samples_per_class} "
               f"must divide train.batch_size={cfg.train.batch_size}: e.g. data.samples_per_class=4 with a batch of 128")
    _check(not (d.name == "custom" and d.path is None), "data.name=custom needs data.path=<folder or file>")
    close = difflib.get_close_matches(d.name, known_names(), n=1)
    _check(d.name in DATASETS or d.name == "custom", f"data.name: unknown dataset {d.name!r}"
           + (f" (did you mean {close[0]!r}?)" if close else "") + f"; use one of {', '.join(known_names())}")
    tok = cfg.tokenizer
    _check(not (tok.name and tok.train), f"tokenizer.name={tok.name!r} and tokenizer.train={tok.train!r} "
           "exclude each other: set one of them to null")
    _check(tok.vocab_size >= 100, f"tokenizer.vocab_size: {tok.vocab_size} is too small (use at least 100)")
    _check(tok.min_frequency >= 1, f"tokenizer.min_frequency: {tok.min_frequency} must be >= 1")
    for key in ("hidden_size", "num_heads", "ffn_size"):
        _check(getattr(m, key) > 0, f"model.{key}: {getattr(m, key)} must be a positive integer")
    _check(m.num_layers is None or m.num_layers > 0, f"model.num_layers: {m.num_layers} must be a positive integer")
    _check(m.embed_dim is None or m.embed_dim > 0, f"model.embed_dim: {m.embed_dim} must be positive")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout: {m.dropout} must be in [0, 1)")
    if m.encoder == "transformer":
        _check(m.hidden_size % m.num_heads == 0,
               f"model.hidden_size={m.hidden_size} must be divisible by model.num_heads={m.num_heads}")
        embed = m.embed_dim or m.hidden_size
        _check(embed == m.hidden_size,
               f"model.embed_dim={embed} must equal model.hidden_size={m.hidden_size} for the Transformer")
    if m.encoder == "pretrained":
        _check(bool(m.pretrained), "model.encoder=pretrained needs model.pretrained=<Hub id or local directory>, "
               "e.g. model.pretrained=sentence-transformers/all-MiniLM-L6-v2")
        _check(m.word_vectors is None, "model.word_vectors: a pretrained encoder brings its own embeddings; "
               "unset model.word_vectors")
    else:
        _check(m.pretrained is None, f"model.pretrained={m.pretrained!r} is read only by model.encoder=pretrained: "
               "set model.encoder=pretrained or model.pretrained=null")
    check_groups(m)
    _check(meth.temperature > 0, f"method.temperature: {meth.temperature} must be > 0")
    _check(meth.projection_dim is None or meth.projection_dim > 0, "method.projection_dim must be positive")
    _check(meth.projection != "identity" or meth.projection_dim is None,
           "method.projection=identity keeps the pooled size: unset method.projection_dim or use "
           "method.projection=linear|mlp|mlp_bn")
    _check(meth.supcon_queue >= 0, f"method.supcon_queue: {meth.supcon_queue} must be >= 0 (0 turns the memory off)")
    _check(meth.ce_weight >= 0, f"method.ce_weight: {meth.ce_weight} must be >= 0")
    _check(len(meth.inforeg_weights) == 3 and all(w >= 0 for w in meth.inforeg_weights),
           "method.inforeg_weights: give three non-negative weights [invariance, variance, covariance]")
    _check(meth.label_dim > 0, f"method.label_dim: {meth.label_dim} must be positive")
    _check(t.epochs > 0, f"train.epochs: {t.epochs} must be a positive integer")
    _check(t.early_stopping_patience is None or t.early_stopping_patience >= 1,
           f"train.early_stopping_patience: {t.early_stopping_patience} must be >= 1 (epochs without a validation "
           "gain before stopping) or null (off)")
    _check(t.batch_size > 1, f"train.batch_size: {t.batch_size} must be >= 2 (contrastive losses need pairs)")
    _check(t.eval_batch_size > 0, f"train.eval_batch_size: {t.eval_batch_size} must be positive")
    _check(t.lr > 0, f"train.lr: {t.lr} must be > 0, e.g. train.lr=1e-3")
    _check(t.head_lr is None or t.head_lr > 0, f"train.head_lr: {t.head_lr} must be > 0 or null (= train.lr)")
    _check(t.weight_decay >= 0, f"train.weight_decay: {t.weight_decay} must be >= 0")
    _check(0.0 <= t.warmup_ratio < 1.0, f"train.warmup_ratio: {t.warmup_ratio} must be in [0, 1)")
    _check(t.grad_clip is None or t.grad_clip > 0, f"train.grad_clip: {t.grad_clip} must be > 0 or null")
    _check(t.max_steps is None or t.max_steps > 0, f"train.max_steps: {t.max_steps} must be positive or null")
    _check(t.num_processes is None or t.num_processes > 0, "train.num_processes must be positive")
    if t.pipeline:
        _check(t.mixed_precision != "fp16", "train.pipeline with train.mixed_precision=fp16 would update one loss "
               "scaler from several threads: use train.mixed_precision=bf16 or no")
        _check(meth.name == "bp" or meth.backward == "per_group", "train.pipeline steps each stage on its own: "
               "use method.backward=per_group")
        _check(t.micro_batches >= 1 and t.queue_size >= 1, "train.micro_batches and train.queue_size must be >= 1")
        _check(t.threads_per_stage is None or t.threads_per_stage >= 1, "train.threads_per_stage must be >= 1")
    if t.pipeline == "processes":
        _check(meth.name != "bp", "train.pipeline=processes needs a decoupled method (bp's gradient crosses every "
               "stage): for bp use train.pipeline=torch_gpipe or torch_1f1b (over the same processes), or threads")
        _check(not meth.gather_features, "method.gather_features=true: train.pipeline=processes pools SupCon over "
               "a stage's replicas when there are several (the default) and cannot with one: unset "
               "method.gather_features (false: each replica's own batch)")
    if t.pipeline in TORCH_PIPELINES:
        _check(meth.name == "bp", f"train.pipeline={t.pipeline} pipelines bp (one backward through every group): "
               f"set method.name=bp, or train.pipeline=processes for {meth.name}")
    _check(t.stages_per_rank is None or t.pipeline == "processes", "train.stages_per_rank needs "
           "train.pipeline=processes")
    _check(t.timeout_s > 0, f"train.timeout_s: {t.timeout_s} must be > 0")
    _check(t.save_every is None or t.save_every > 0, f"train.save_every: {t.save_every} must be positive or null")
    _check(t.keep_checkpoints >= 1, f"train.keep_checkpoints: {t.keep_checkpoints} must be >= 1")
    _check(t.max_nonfinite >= 1, f"train.max_nonfinite: {t.max_nonfinite} must be >= 1")
    _check(not (t.mixed_precision == "fp16" and meth.name != "bp" and meth.backward == "per_group"),
           "train.mixed_precision=fp16 with per-group optimizers updates the loss scaler once per group: "
           "use train.mixed_precision=bf16 or method.backward=sum")
    _check(cfg.eval.probe_samples > 0, "eval.probe_samples must be positive")
    _check(bool(cfg.output_dir), "output_dir must not be empty")


# how and where a run is carried out, not what it computes: a run may be moved, or resumed with other values
_NOT_IDENTITY = {"output_dir", "run_name", "train.resume", "train.resume_other_versions", "train.progress",
                 "train.save_every", "train.timeout_s", "train.keep_checkpoints", "train.log_with", "data.num_workers"}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (lists and scalars kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_identity(settings: Config | dict) -> dict[str, Any]:
    """Every setting that changes what a run computes, flattened: two runs with the same identity train the
    same model the same way. Resuming a checkpoint and reusing a finished run in ``compare`` both require it
    to be unchanged."""
    tree = settings.to_dict() if isinstance(settings, Config) else settings
    return {k: v for k, v in flatten(tree).items() if k not in _NOT_IDENTITY}


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
