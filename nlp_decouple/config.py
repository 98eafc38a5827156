"""Typed run configuration: pydantic models, YAML recipes and ``key=value`` overrides.

Each field declares its type and limits; a rule tying fields together sits on the section that owns them
(on Config when it spans sections). Any bad value raises :class:`UserError`: one line naming the dotted key,
the value and the fix. A field's ``description`` is the hint that line ends with ("null: ..." says what
null means).
"""
from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                      PositiveInt, Strict, ValidationError, model_validator)

from .errors import UserError, did_you_mean, one_line
from .registry import METHODS, known_names


class _Yaml(yaml.SafeLoader):
    """YAML 1.1 plus 1.2's floats: PyYAML reads ``1e-3`` (no dot, no exponent sign) as a string."""


# an own copy of the table: add_implicit_resolver would otherwise append to SafeLoader's lists
_Yaml.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_FLOAT_1_2 = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_Yaml.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+.0123456789"))


class _YamlDumper(yaml.SafeDumper):
    """Writes what :class:`_Yaml` reads back unchanged: a text such as ``1e3`` is quoted."""


_YamlDumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
_YamlDumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+.0123456789"))


def dump_yaml(data: Any) -> str:
    """``data`` as YAML, in its own key order, that :func:`load_config` reads back equal."""
    return yaml.dump(data, Dumper=_YamlDumper, sort_keys=False)


def _yaml_scalar(text: str) -> Any:
    """A command-line value read as YAML (numbers, null, true, [a, b]), else kept as the plain string."""
    try:
        return yaml.load(text, Loader=_Yaml)
    except yaml.YAMLError:
        return text


def _split_commas(value: Any) -> Any:
    return [_yaml_scalar(v) for v in value.split(",")] if isinstance(value, str) and value.strip() else value


Commas = BeforeValidator(_split_commas)  # a list field given key=a,b (or key=a) on the command line
Text = Annotated[str, Strict(False)]  # a number where text is expected is kept as text, e.g. run_name=2024


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)  # pydantic lets it through untouched


class _Section(BaseModel):
    # strict: no silent casts (2.5 is no int, 1 is no bool); mutable: later code fills in what it learns
    model_config = ConfigDict(extra="forbid", strict=True, coerce_numbers_to_str=True)


class DataConfig(_Section):
    name: Text = "synthetic"  # registry name (see nlp_decouple.registry) or "custom"
    path: Text | None = None  # local copy: Hub-layout folder, save_to_disk folder, or CSV/JSON/parquet file(s)
    test_path: Text | None = None  # optional separate test file when `path` is a single file
    text_fields: Annotated[list[Text] | None, Commas] = None  # columns joined with a space; default from the registry
    label_field: Text | None = None
    label_offset: int = 0  # added to integer labels, e.g. -1 for the classic 1-based AG News CSV
    max_length: PositiveInt | None = Field(None, description="tokens; null: from the registry")
    val_fraction: float = Field(0.1, gt=0, lt=1)  # carved from train, stratified, when the source has no validation split
    test_fraction: float = Field(0.2, gt=0, lt=1)  # only used when the source has no test split
    max_train_samples: PositiveInt | None = None
    max_eval_samples: PositiveInt | None = None
    label_noise: float = Field(0.0, ge=0, lt=1)  # fraction of training labels replaced by another class
    synthetic_train_size: int = Field(4000, ge=20)
    synthetic_test_size: int = Field(1000, ge=10)
    num_workers: NonNegativeInt = 0
    # training batches: random, or groups of samples_per_class texts of one class (nlp_decouple.data.sampling):
    # grouped keeps class frequencies and shows each text once an epoch; class_balanced draws classes uniformly
    sampler: Literal["random", "grouped", "class_balanced"] = "random"
    samples_per_class: int = 4

    @model_validator(mode="after")
    def _rules(self) -> DataConfig:
        _check(self.name in known_names(), f"data.name: unknown dataset {self.name!r}"
               f"{did_you_mean(self.name, known_names())}; use one of {', '.join(known_names())}")
        _check(not (self.name == "custom" and self.path is None), "data.name=custom needs data.path=<folder or file>")
        _check(self.sampler == "random" or self.samples_per_class >= 2, f"data.samples_per_class: "
               f"{self.samples_per_class} must be >= 2 (a text needs another of its class in the batch)")
        return self


class TokenizerConfig(_Section):
    name: Text | None = None  # Hub id or local directory, loaded with AutoTokenizer
    train: Literal["wordpiece", "word"] | None = None  # or train one on the training split
    vocab_size: int = Field(30000, ge=100)
    min_frequency: PositiveInt = 1
    lowercase: bool = True
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _rules(self) -> TokenizerConfig:
        _check(not (self.name and self.train), f"tokenizer.name={self.name!r} and tokenizer.train={self.train!r} "
               "exclude each other: set one of them to null")
        return self


class ModelConfig(_Section):
    encoder: Literal["transformer", "lstm", "pretrained"] = "transformer"
    # encoder blocks after the embedding block; null: 3 (transformer, lstm) or every layer of `pretrained`
    num_layers: PositiveInt | None = None
    pretrained: Text | None = None  # encoder=pretrained: Hub id or local directory (BERT layout, DistilBERT, DeBERTa-v2/v3, MPNet, ModernBERT)
    hidden_size: PositiveInt = 300  # Transformer d_model / LSTM units per direction
    embed_dim: PositiveInt | None = Field(None, description="null: model.hidden_size")
    num_heads: PositiveInt = 6
    ffn_size: PositiveInt = 300
    dropout: float = Field(0.1, ge=0, lt=1)
    positional: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    norm: Literal["pre", "post"] = "post"
    pooling: Literal["mean", "cls"] = "mean"  # Transformer blocks
    lstm_pooling: Literal["last", "mean"] = "last"
    lstm_state_handoff: bool = False  # reference SCPL: an LSTM block starts from the previous final (h, c)
    # layer groups over the num_layers + 1 blocks: k near-equal groups, or their sizes; null: one block each
    groups: Annotated[int | list[int] | None, Commas] = None
    word_vectors: Text | None = None  # GloVe-format text file
    freeze_embeddings: bool = False  # pretrained: the whole Hub embedding module

    @model_validator(mode="after")
    def _rules(self) -> ModelConfig:
        if self.num_layers is None and self.encoder != "pretrained":
            self.num_layers = 3  # a pretrained model's count is known once it is loaded (models.pretrained)
        if self.encoder == "transformer":
            _check(self.hidden_size % self.num_heads == 0,
                   f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}")
            _check((self.embed_dim or self.hidden_size) == self.hidden_size, f"model.embed_dim={self.embed_dim} "
                   f"must equal model.hidden_size={self.hidden_size} for the Transformer")
        if self.encoder == "pretrained":
            _check(bool(self.pretrained), "model.encoder=pretrained needs model.pretrained=<Hub id or local "
                   "directory>, e.g. model.pretrained=sentence-transformers/all-MiniLM-L6-v2")
            _check(self.word_vectors is None, "model.word_vectors: a pretrained encoder brings its own "
                   "embeddings; unset model.word_vectors")
        else:
            _check(self.pretrained is None, f"model.pretrained={self.pretrained!r} is read only by "
                   "model.encoder=pretrained: set model.encoder=pretrained or model.pretrained=null")
        check_groups(self)
        return self


class MethodConfig(_Section):
    name: Literal[tuple(METHODS)] = "bp"  # see nlp_decouple.registry
    backward: Literal["per_group", "sum"] = "per_group"  # decoupled methods only
    temperature: float = Field(0.1, gt=0)
    learn_temperature: bool = False  # SCPL: tau a trained parameter per group, starting at `temperature`
    projection: Literal["identity", "linear", "mlp", "mlp_bn"] = "identity"
    projection_dim: PositiveInt | None = Field(None, description="null: the group's pooled size")
    supcon_divisor: Literal["positives", "positives_plus_one"] = "positives"
    # SCPL: past features (and labels) kept as extra positives/negatives
    supcon_queue: NonNegativeInt = Field(0, description="0 turns the memory off")
    supcon_prototypes: bool = False  # SCPL: a learnable centre per class joins each group's contrast set
    ce_weight: NonNegativeFloat = 0.001  # DeInfoReg's classifier weight
    inforeg_weights: Annotated[list[NonNegativeFloat], Commas] = Field(
        [1.0, 1.0, 1.0], min_length=3, max_length=3, description="DeInfoReg's invariance, variance, covariance")
    classifier_standardize: bool = True  # SCPL: standardise the detached features its classifier reads
    exit_input: Literal["last", "all_groups"] = "last"  # SCPL: what its classifier reads (every group's, concatenated)
    classifier_detach: bool = False  # DeInfoReg: detach the projector output before its classifier
    label_dim: PositiveInt = 128  # AL
    al_activation: Literal["tanh", "relu", "sigmoid"] = "tanh"
    al_detach_target: bool = False  # AL: bridge target t.detach() (later code); default ICLR form
    al_assoc_weight: float = 1.0
    al_ae_weight: float = 1.0
    gather_features: bool | None = None  # SupCon over every process's batch; None: on when several processes

    @model_validator(mode="after")
    def _rules(self) -> MethodConfig:
        _check(self.projection != "identity" or self.projection_dim is None, "method.projection=identity keeps "
               "the pooled size: unset method.projection_dim or use method.projection=linear|mlp|mlp_bn")
        return self


class TrainConfig(_Section):
    epochs: PositiveInt = 3  # the cap when early_stopping_patience is set
    early_stopping_patience: int | None = Field(
        None, ge=1, description="epochs without a validation gain before stopping; null: off")
    batch_size: int = Field(128, ge=2, description="contrastive losses need pairs")
    eval_batch_size: PositiveInt = 256
    lr: float = Field(1e-3, gt=0, description="e.g. train.lr=1e-3")
    head_lr: PositiveFloat | None = Field(  # heads: projections, classifiers, AL's label side
        None, description="null: train.lr")
    group_lr_scale: Annotated[list[PositiveFloat] | None, Commas] = Field(  # e.g. 1,1,2,2
        None, description="a factor on the lr of each layer group (and of the head that trains it); null: all 1")
    weight_decay: NonNegativeFloat = 0.0  # never on biases and normalisation weights (see nlp_decouple.optim)
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    grad_clip: PositiveFloat | None = None
    seed: int = 0
    max_steps: PositiveInt | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_with: Annotated[list[Text], Commas] = []  # Accelerate trackers, e.g. [tensorboard]
    num_processes: PositiveInt | None = None  # refuse to run when the launched world size differs
    cpu: bool = False
    deterministic: bool = False
    max_nonfinite: PositiveInt = 5  # stop after this many non-finite losses in a row
    progress: bool = True
    # layer groups as pipeline stages: false | true = threads (a decoupled method's stages, a worker thread and
    # device each, one process) | processes (a contiguous block of stages per rank of accelerate launch / torchrun;
    # decoupled methods) | torch_gpipe, torch_1f1b (bp over the same ranks on torch.distributed.pipelining)
    pipeline: bool | Literal["threads", "processes", "torch_gpipe", "torch_1f1b"] = False
    stages_per_rank: Annotated[list[int] | None, Commas] = None  # pipeline=processes: stages of rank 0, 1, ...; null: balanced
    timeout_s: PositiveFloat = 600.0  # seconds a wait on another process may last before the run fails
    devices: Text | list[Text] = "auto"  # pipeline placement: auto | cpu | [cuda:0, cuda:1, ...] | [cpu, cpu]
    micro_batches: PositiveInt = 4  # pipelined bp (torch_gpipe, torch_1f1b): micro-batches per batch
    queue_size: PositiveInt = 2  # pipeline: batches a stage may run ahead of the next
    threads_per_stage: PositiveInt | None = None  # pipeline on CPU: intra-op threads per worker (default: split evenly)
    save_every: PositiveInt | None = None  # checkpoint every N steps (and always at each epoch end)
    keep_checkpoints: PositiveInt = 2  # newest complete checkpoints kept
    resume: Text | None = None  # "auto": continue from the newest complete checkpoint of this run; or a path
    resume_other_versions: bool = False  # resume a checkpoint made by other code or on other data

    @model_validator(mode="after")
    def _rules(self) -> TrainConfig:
        _check(not (self.pipeline and self.mixed_precision == "fp16"), "train.pipeline with "
               "train.mixed_precision=fp16 would update one loss scaler from several threads: use "
               "train.mixed_precision=bf16 or no")
        _check(self.stages_per_rank is None or self.pipeline == "processes",
               "train.stages_per_rank needs train.pipeline=processes")
        return self

TORCH_PIPELINES = ("torch_gpipe", "torch_1f1b")  # train.pipeline values for bp on torch.distributed.pipelining


def over_processes(t: TrainConfig) -> bool:
    """Whether train.pipeline spreads the model over the processes of a launch (each rank its own block)."""
    return t.pipeline == "processes" or t.pipeline in TORCH_PIPELINES


class EvalConfig(_Section):
    every_group: bool = True  # layer-wise accuracies each epoch (exits or linear probes)
    probe_samples: PositiveInt = 2000  # probe set: training texts (seeded, stratified draw) for linear probes and refresh
    probe_max_iter: PositiveInt = 500
    test: bool = True  # score the test split each epoch; false while tuning (test is never read)


_SECTIONS = ("data", "tokenizer", "model", "method", "train", "eval")


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: Text = "runs"
    run_name: Text | None = None  # default: {data}-{encoder}-{method}-seed{seed}

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, raw: Any) -> Any:  # a recipe's "train:" with nothing under it
        return {k: {} if v is None and k in _SECTIONS else v for k, v in raw.items()} if isinstance(raw, dict) else raw

    @model_validator(mode="after")
    def _rules(self) -> Config:
        d, tok, m, meth, t = self.data, self.tokenizer, self.model, self.method, self.train
        if m.encoder == "pretrained" and not (tok.name or tok.train):
            tok.name = m.pretrained  # the model's own tokenizer by default
        _check(d.sampler == "random" or t.batch_size % d.samples_per_class == 0,
               f"data.samples_per_class={d.samples_per_class} must divide train.batch_size={t.batch_size}: "
               "e.g. data.samples_per_class=4 with a batch of 128")
        _check(not t.pipeline or meth.name == "bp" or meth.backward == "per_group",
               "train.pipeline steps each stage on its own: use method.backward=per_group")
        decoupled = METHODS[meth.name].decoupled
        if t.pipeline and t.pipeline not in TORCH_PIPELINES:  # threads or processes: a stage per group
            _check(decoupled, f"train.pipeline={'true' if t.pipeline is True else t.pipeline} needs a "
                   "decoupled method (bp's gradient crosses every stage): for bp use train.pipeline=torch_gpipe or "
                   "torch_1f1b under a launcher of 2 or more processes (docs/user_guide.md)")
        if t.pipeline == "processes":
            _check(not meth.gather_features, "method.gather_features=true: train.pipeline=processes pools SupCon "
                   "over a stage's replicas when there are several (the default) and cannot with one: unset "
                   "method.gather_features (false: each replica's own batch)")
        if t.pipeline in TORCH_PIPELINES:
            _check(not decoupled, f"train.pipeline={t.pipeline} pipelines bp (one backward through every "
                   f"group): set method.name=bp, or train.pipeline=processes for {meth.name}")
        _check(not (t.mixed_precision == "fp16" and meth.name != "bp" and meth.backward == "per_group"),
               "train.mixed_precision=fp16 with per-group optimizers updates the loss scaler once per group: "
               "use train.mixed_precision=bf16 or method.backward=sum")
        _check(meth.exit_input == "last" or meth.name == "scpl", f"method.exit_input={meth.exit_input} is "
               f"SCPL's option ({meth.name}'s exits read their own group's features): unset method.exit_input")
        _check(bool(self.output_dir), "output_dir must not be empty")
        return self

    def run_dir(self) -> Path:
        name = self.run_name or f"{self.data.name}-{self.model.encoder}-{self.method.name}-seed{self.train.seed}"
        return Path(self.output_dir) / name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


# ---------------------------------------------------------------- recipes and overrides


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


_UNIONS = (typing.Union, types.UnionType)


def _text_keys(model: type[BaseModel] | None = None, prefix: str = "") -> set[str]:
    """Dotted keys of the single-text fields (``Text`` or ``Text | None``), read from the config's models."""
    keys = set()
    for name, field in (model or Config).model_fields.items():
        kinds = [typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a  # Text | None -> [str]
                 for a in (typing.get_args(field.annotation) if typing.get_origin(field.annotation) in _UNIONS
                           else (field.annotation,)) if a is not type(None)]
        if len(kinds) == 1 and isinstance(kinds[0], type) and issubclass(kinds[0], BaseModel):
            keys |= _text_keys(kinds[0], f"{prefix}{name}.")
        elif kinds == [str]:
            keys.add(prefix + name)
    return keys


_TEXT_KEYS = _text_keys()


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` as (key, value): the value read as YAML, except that a text field keeps the text as
    typed (``run_name=1e3`` is "1e3", not 1000.0; ``null`` still unsets it)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} must look like key=value, e.g. train.epochs=3")
    key, value = key.strip(), value.strip()
    if not value:
        return key, None
    parsed = _yaml_scalar(value)  # a quoted text loses its quotes here
    return key, (value if key in _TEXT_KEYS and isinstance(parsed, (int, float, bool)) else parsed)


def config_from_dict(raw: dict) -> Config:
    """A validated Config from plain data (e.g. a saved config.yaml); keys it lacks take their defaults."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(one_line(err, Config)) from None


def load_config(recipe: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or none), apply ``key=value`` overrides, validate and return the config."""
    raw: dict = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise UserError(f"recipe {str(path)!r} not found: give the path of a YAML file, e.g. recipes/quickstart.yaml")
        try:
            raw = yaml.load(path.read_text(), Loader=_Yaml) or {}
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
            hint = did_you_mean(name, list(METHODS))
            raise UserError(f"{PER_METHOD}.{name}: unknown method" + (hint or f"; use one of {', '.join(METHODS)}"))
    section = raw.get("method")
    default = MethodConfig.model_fields["name"].default
    method = section.get("name", default) if isinstance(section, dict) else default
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


# how and where a run is carried out, not what it computes: a run may be moved, or resumed with other values
_NOT_IDENTITY = {"output_dir", "run_name", "train.resume", "train.progress", "train.save_every", "train.timeout_s",
                 "train.keep_checkpoints", "train.log_with", "train.resume_other_versions", "data.num_workers"}


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
    path.write_text(dump_yaml(cfg.to_dict()))
