"""Configuration: recipes, key=value overrides, validation messages and the CLI's error handling."""
from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from nlp_decouple.config import (Config, MethodConfig, config_from_dict, group_sizes, load_config, parse_override,
                                 run_identity, save_config)
from nlp_decouple.errors import UserError

from conftest import REPO

QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = """\
# a small recipe for the tests
data:
  name: synthetic
  synthetic_train_size: 200
model:
  encoder: transformer
  num_layers: 3
  hidden_size: 64
  num_heads: 4
method:
  name: scpl
train:
  epochs: 2
  lr: 5.0e-4
  log_with: [tensorboard]
"""


# ---------------------------------------------------------------- good recipes and overrides


def test_good_recipe_values_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert isinstance(cfg, Config)
    assert cfg.data.synthetic_train_size == 200
    assert cfg.model.hidden_size == 64 and cfg.model.num_heads == 4 and cfg.model.num_layers == 3
    assert cfg.method.name == "scpl"
    assert cfg.train.epochs == 2
    assert cfg.train.lr == pytest.approx(5e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.log_with == ["tensorboard"]
    # keys the recipe leaves out keep the dataclass defaults
    assert cfg.train.batch_size == 128
    assert cfg.tokenizer.vocab_size == 30000
    assert cfg.model.groups is None


def test_no_recipe_gives_defaults():
    cfg = load_config(None)
    assert cfg.data.name == "synthetic" and cfg.method.name == "bp" and cfg.model.encoder == "transformer"


def test_nested_overrides_win_over_recipe(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["model.hidden_size=32", "model.num_heads=2", "train.lr=1e-3",
                                              "eval.probe_samples=10", "output_dir=elsewhere"])
    assert cfg.model.hidden_size == 32 and cfg.model.num_heads == 2
    assert cfg.model.num_layers == 3  # untouched siblings survive
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.epochs == 2
    assert cfg.eval.probe_samples == 10  # a section the recipe does not have
    assert cfg.output_dir == "elsewhere"


def test_list_overrides_split_on_commas(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["train.log_with=tensorboard,wandb", "method.inforeg_weights=1,0.5,2",
                                              "model.groups=1,3", "data.text_fields=title,description"])
    assert cfg.train.log_with == ["tensorboard", "wandb"]
    assert cfg.method.inforeg_weights == [1.0, 0.5, 2.0]
    assert all(isinstance(w, float) for w in cfg.method.inforeg_weights)
    assert cfg.model.groups == [1, 3]
    assert cfg.data.text_fields == ["title", "description"]


def test_single_item_list_and_yaml_list_override(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["data.text_fields=review", "model.groups=[2, 2]"])
    assert cfg.data.text_fields == ["review"]
    assert cfg.model.groups == [2, 2]


def test_null_and_int_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["model.groups=2", "train.grad_clip=1.0"])
    assert cfg.model.groups == 2 and isinstance(cfg.model.groups, int)
    cfg = load_config(write(tmp_path, GOOD), ["model.groups=null", "data.path=null", "train.grad_clip=null"])
    assert cfg.model.groups is None and cfg.data.path is None and cfg.train.grad_clip is None


def test_int_accepted_for_float_and_bools_parsed():
    cfg = load_config(None, ["train.lr=1", "train.progress=false", "train.cpu=true"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.progress is False and cfg.train.cpu is True


def test_override_value_with_equals_sign_is_kept():
    assert parse_override("data.path=/tmp/a=b.csv") == ("data.path", "/tmp/a=b.csv")
    assert parse_override(" train.epochs = 4") == ("train.epochs", 4)


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "justtext"])
def test_override_without_key_value_form(bad):
    with pytest.raises(UserError, match="key=value"):
        load_config(None, [bad])


def test_override_into_a_scalar_is_refused(tmp_path):
    with pytest.raises(UserError, match="'lr' is not a section"):
        load_config(write(tmp_path, GOOD), ["train.lr.x=1"])  # the recipe sets train.lr
    with pytest.raises(UserError, match=r"^train\.lr: expected float"):
        load_config(None, ["train.lr.x=1"])


def test_exponent_floats_without_a_dot(tmp_path):
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; the CLI help itself suggests ``train.lr=5e-4``."""
    cfg = load_config(None, ["train.lr=5e-4", "method.temperature=1E-1", "train.grad_clip=+2e0",
                             "method.inforeg_weights=1e0,5e-1,25"])
    assert cfg.train.lr == pytest.approx(5e-4)
    assert cfg.method.temperature == pytest.approx(0.1)
    assert cfg.train.grad_clip == pytest.approx(2.0)
    assert cfg.method.inforeg_weights == [1.0, 0.5, 25.0]
    assert load_config(write(tmp_path, "train:\n  lr: 3e-4\n")).train.lr == pytest.approx(3e-4)
    with pytest.raises(UserError, match="must be > 0"):
        load_config(None, ["train.lr=-1e-3"])
    with pytest.raises(UserError, match="expected float"):
        load_config(None, ["train.lr=1e-3x"])


# ---------------------------------------------------------------- unknown keys and wrong types


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(UserError, match=r"unknown key 'train\.epoch'.*did you mean train\.epochs\?"):
        load_config(None, ["train.epoch=3"])


def test_unknown_section_suggests_the_close_one():
    with pytest.raises(UserError, match=r"unknown key 'trian'.*did you mean train\?"):
        load_config(None, ["trian.epochs=3"])


def test_unknown_key_in_recipe_file(tmp_path):
    path = write(tmp_path, GOOD + "eval:\n  probe_sample: 10\n")
    with pytest.raises(UserError, match=r"eval\.probe_sample.*did you mean eval\.probe_samples"):
        load_config(path)


def test_unknown_key_without_close_match_lists_known_keys():
    with pytest.raises(UserError, match="known keys: .*epochs"):
        load_config(None, ["train.zzzzzz=1"])


@pytest.mark.parametrize("override, key", [
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.lr=fast", "train.lr"),
    ("train.progress=maybe", "train.progress"),
    ("train.batch_size=true", "train.batch_size"),
    ("method.inforeg_weights=1,x,2", "method.inforeg_weights[1]"),
    ("train.early_stopping_patience=2.5", "train.early_stopping_patience"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(UserError, match="expected") as info:
        load_config(None, [override])
    assert str(info.value).startswith(key + ":")


def test_section_given_a_scalar(tmp_path):
    with pytest.raises(UserError, match="train: expected a mapping"):
        load_config(write(tmp_path, "train: 3\n"))


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize("overrides, needle", [
    (["train.lr=-0.001"], "train.lr"),
    (["train.lr=0"], "train.lr"),
    (["method.temperature=0"], "method.temperature"),
    (["method.temperature=-0.5"], "method.temperature"),
    (["data.label_noise=1.0"], "data.label_noise"),
    (["data.val_fraction=0"], "data.val_fraction"),
    (["train.batch_size=1"], "train.batch_size"),
    (["model.dropout=1.0"], "model.dropout"),
    (["method.inforeg_weights=1,1"], "method.inforeg_weights"),
    (["tokenizer.vocab_size=10"], "tokenizer.vocab_size"),
    (["data.name=custom"], "data.path"),
    (["train.early_stopping_patience=0"], "train.early_stopping_patience"),
])
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    assert needle in str(info.value)


def test_groups_must_sum_to_blocks():
    # 3 encoder layers + the embedding block = 4 blocks
    assert load_config(None, ["model.num_layers=3", "model.groups=1,3"]).model.groups == [1, 3]
    with pytest.raises(UserError, match=r"model\.groups.*summing to 4"):
        load_config(None, ["model.num_layers=3", "model.groups=1,2"])
    with pytest.raises(UserError, match=r"model\.groups"):
        load_config(None, ["model.num_layers=3", "model.groups=1,2,2"])
    with pytest.raises(UserError, match=r"model\.groups"):
        load_config(None, ["model.num_layers=3", "model.groups=0,4"])


def test_groups_int_cannot_exceed_blocks():
    assert load_config(None, ["model.num_layers=3", "model.groups=4"]).model.groups == 4
    with pytest.raises(UserError, match=r"model\.groups: 5 groups cannot be cut from 4 blocks.*1\.\.4"):
        load_config(None, ["model.num_layers=3", "model.groups=5"])
    with pytest.raises(UserError, match=r"model\.groups"):
        load_config(None, ["model.groups=0"])


def test_unknown_method_suggests():
    with pytest.raises(UserError, match=r"method\.name: 'scpll' is not one of .*did you mean 'scpl'\?"):
        load_config(None, ["method.name=scpll"])


def test_unknown_encoder_suggests():
    with pytest.raises(UserError, match=r"model\.encoder: 'lstmm' is not one of .*did you mean 'lstm'\?"):
        load_config(None, ["model.encoder=lstmm"])


def test_unknown_choice_without_close_match_lists_choices():
    with pytest.raises(UserError, match="bf16") as info:
        load_config(None, ["train.mixed_precision=zzz"])
    assert "did you mean" not in str(info.value)


def test_hidden_size_divisible_by_heads():
    with pytest.raises(UserError, match=r"model\.hidden_size=64 must be divisible by model\.num_heads=5"):
        load_config(None, ["model.hidden_size=64", "model.num_heads=5"])
    # heads mean nothing to the LSTM
    assert load_config(None, ["model.encoder=lstm", "model.hidden_size=64", "model.num_heads=5"]).model.encoder == "lstm"


def test_fp16_with_per_group_backward_is_refused():
    with pytest.raises(UserError, match=r"train\.mixed_precision=fp16.*bf16.*method\.backward=sum"):
        load_config(None, ["method.name=scpl", "train.mixed_precision=fp16"])
    # the three ways out are all accepted
    load_config(None, ["method.name=scpl", "train.mixed_precision=fp16", "method.backward=sum"])
    load_config(None, ["method.name=scpl", "train.mixed_precision=bf16"])
    load_config(None, ["method.name=bp", "train.mixed_precision=fp16"])


def test_config_method_choices_match_the_methods_registry():
    from nlp_decouple.methods import METHODS

    choices = set(typing.get_args(typing.get_type_hints(MethodConfig)["name"]))
    assert choices == set(METHODS)


def test_limit_messages_say_the_bound_the_why_and_what_null_means():
    cases = {
        "data.val_fraction=1.5": "data.val_fraction: 1.5 must be in (0, 1)",
        "data.label_noise=-0.1": "data.label_noise: -0.1 must be in [0, 1)",
        "train.batch_size=1": "train.batch_size: 1 must be >= 2 (contrastive losses need pairs)",
        "train.max_steps=0": "train.max_steps: 0 must be > 0 or null",
        "train.head_lr=-1": "train.head_lr: -1 must be > 0 or null (train.lr)",
        "train.early_stopping_patience=0": "train.early_stopping_patience: 0 must be >= 1 (epochs without a "
                                           "validation gain before stopping) or null (off)",
        "train.epochs=null": "train.epochs: expected int, got None",
        "train.pipeline=procs": "train.pipeline: expected bool or 'threads', 'processes', 'torch_gpipe' or 'torch_1f1b', "
                                "got 'procs'",
    }
    for override, message in cases.items():
        with pytest.raises(UserError) as info:
            load_config(None, [override])
        assert str(info.value) == message


def test_every_config_error_is_one_line_naming_the_key(tmp_path):
    """Each field, given a mapping, a word, a negative number or a list: accepted, or one line; a mapping is
    never a field's value, so that error names the field."""
    keys = [f"{section}.{key}" for section, field in Config.model_fields.items()
            for key in getattr(field.annotation, "model_fields", ())] + ["output_dir", "run_name"]
    assert len(keys) > 90
    for key in keys:
        for value in ("{a: 1}", "zzz", "-1", "[1, x, -2.5]", "''"):
            try:
                load_config(None, [f"{key}={value}"])
            except UserError as err:
                message = str(err)
                assert message and "\n" not in message, (key, value, message)
                if value == "{a: 1}":
                    assert message.startswith(f"{key}: "), message
        section, _, name = key.rpartition(".")
        with pytest.raises(UserError) as info:  # the same through a recipe file
            load_config(write(tmp_path, yaml.safe_dump({section: {name: {"a": [1]}}} if section else {name: {}})))
        assert str(info.value).startswith(f"{key}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, message", [
    (["model.groups=[2, x]"], "model.groups[1]: expected int, got 'x'"),
    (["model.groups=1.5,3"], "model.groups[0]: expected int, got 1.5"),
    (["method.inforeg_weights=[1, 1, -1]"], "method.inforeg_weights[2]: -1 must be >= 0"),
    (["train.pipeline=processes", "method.name=scpl", "train.stages_per_rank=2,two"],
     "train.stages_per_rank[1]: expected int, got 'two'"),
    (["train.log_with=[tensorboard, [wandb]]"], "train.log_with[1]: expected str, got ['wandb']"),
    (["train.devices=[cpu, {cuda: 0}]"], "train.devices[1]: expected str, got {'cuda': 0}"),
])
def test_a_bad_item_of_a_list_names_its_index(overrides, message):
    with pytest.raises(UserError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("overrides", [
    ["train.lr=5e-4", "model.groups=1,3", "method.name=scpl", "method.inforeg_weights=1e0,5e-1,25",
     "train.pipeline=processes", "train.stages_per_rank=[1,1]", "train.devices=[cpu,cpu]", "run_name=1e3",
     "data.text_fields=title,description", "train.early_stopping_patience=2", "train.resume_other_versions=true"],
    ["model.encoder=pretrained", "model.pretrained=some/model", "model.num_layers=null", "model.groups=2",
     "train.head_lr=1e-5"],
    [],
])
def test_a_saved_config_reads_back_equal(tmp_path, overrides):
    cfg = load_config(write(tmp_path, GOOD), overrides)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.to_dict() == cfg.to_dict()
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg  # as compare reads it
    if "model.encoder=pretrained" in overrides:
        assert again.tokenizer.name == "some/model" and again.model.num_layers is None


@pytest.mark.parametrize("typed", ["1e3", "2024", "0.10", "true", "1e-3"])
def test_a_text_setting_keeps_the_text_as_typed(typed):
    cfg = load_config(None, [f"run_name={typed}", f"data.path={typed}", "train.lr=1e3", "tokenizer.name=null"])
    assert (cfg.run_name, cfg.data.path, cfg.train.lr, cfg.tokenizer.name) == (typed, typed, 1000.0, None)
    assert cfg.run_dir().name == typed


def test_resume_other_versions_is_not_part_of_a_runs_identity():
    plain = run_identity(load_config(None))
    assert run_identity(load_config(None, ["train.resume_other_versions=true"])) == plain
    assert run_identity(load_config(None, ["train.early_stopping_patience=2"])) != plain


# ---------------------------------------------------------------- recipe files


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "# comment\ndata:\n  name: synthetic: oops\ntrain:\n  epochs: 2\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert "line 3" in message and "malformed YAML" in message and str(path) in message
    assert "\n" not in message


def test_recipe_that_is_not_a_mapping(tmp_path):
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(write(tmp_path, "- data\n- model\n"))


def test_per_method_settings_apply_to_their_method_only_and_the_command_line_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: {name: bp}\ntrain: {lr: 3.0e-3, epochs: 4}\n"
                      "per_method:\n  scpl: {train.lr: 1.0e-2, method.temperature: 0.2}\n  al: {train.epochs: 7}\n")
    bp = load_config(recipe)
    assert (bp.train.lr, bp.train.epochs, bp.method.temperature) == (3e-3, 4, 0.1)
    scpl = load_config(recipe, ["method.name=scpl"])
    assert (scpl.train.lr, scpl.train.epochs, scpl.method.temperature) == (1e-2, 4, 0.2)
    assert load_config(recipe, ["method.name=scpl", "train.lr=5e-4"]).train.lr == 5e-4
    assert load_config(recipe, ["method.name=al"]).train.epochs == 7
    assert "per_method" not in scpl.to_dict()  # a run records the settings it used


@pytest.mark.parametrize(("text", "match"), [
    ("per_method: {scpll: {train.lr: 1.0}}", "per_method.scpll: unknown method .*did you mean .scpl."),
    ("per_method: [1, 2]", "per_method: expected a mapping"),
    ("per_method: {scpl: {train.lrr: 1.0}}\nmethod: {name: scpl}", "unknown key .train.lrr.: did you mean train.lr"),
    ("per_method: {scpl: {train.lr: -1.0}}\nmethod: {name: scpl}", "train.lr: -1.0 must be > 0"),
])
def test_bad_per_method_settings_get_one_line(tmp_path, text, match):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text + "\n")
    with pytest.raises(UserError, match=match):
        load_config(recipe)


def test_empty_recipe_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing yet\n")) == Config()


def test_missing_recipe_file(tmp_path):
    missing = tmp_path / "no_such_recipe.yaml"
    with pytest.raises(UserError, match="not found") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


# ---------------------------------------------------------------- group sizes


@pytest.mark.parametrize("num_layers, groups, expected", [
    (3, None, [1, 1, 1, 1]),
    (3, 1, [4]),
    (3, 2, [2, 2]),
    (3, 3, [2, 1, 1]),
    (3, 4, [1, 1, 1, 1]),
    (4, 2, [3, 2]),
    (3, [1, 3], [1, 3]),
    (2, [2, 1], [2, 1]),
])
def test_group_sizes(num_layers, groups, expected):
    value = "null" if groups is None else ",".join(map(str, groups)) if isinstance(groups, list) else str(groups)
    cfg = load_config(None, [f"model.num_layers={num_layers}", f"model.groups={value}"])
    sizes = group_sizes(cfg)
    assert sizes == expected
    assert sum(sizes) == num_layers + 1


# ---------------------------------------------------------------- the CLI


def run_cli(*args: str, cwd: Path = REPO, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "nlp_decouple.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_bad_recipe_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, GOOD + "train:\n  epoch: 3\n")  # duplicate section; the last one has a typo
    line = assert_one_line_error(run_cli(str(path), f"output_dir={tmp_path}"))
    assert "did you mean train.epochs" in line


def test_cli_missing_and_malformed_recipe(tmp_path):
    line = assert_one_line_error(run_cli(str(tmp_path / "missing.yaml")))
    assert "not found" in line
    line = assert_one_line_error(run_cli(str(write(tmp_path, "data: [\n"))))
    assert "malformed YAML" in line


def test_cli_unknown_dataset(tmp_path):
    line = assert_one_line_error(run_cli(str(QUICKSTART), "data.name=nope", f"output_dir={tmp_path}",
                                         "train.progress=false"))
    assert "'nope'" in line and "ag_news" in line and "synthetic" in line


def test_cli_unreachable_hub_points_at_data_path(tmp_path):
    line = assert_one_line_error(run_cli(str(QUICKSTART), "data.name=ag_news", f"output_dir={tmp_path}",
                                         "train.progress=false"))
    assert "data.path" in line
