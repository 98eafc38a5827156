from __future__ import annotations

import sys

import pytest

from nlp_decouple.errors import UserError
from nlp_decouple.registry import METHODS
from nlp_decouple.sweeps import parse_methods, parse_seeds, run_training, train_command


def test_method_and_seed_lists_keep_their_order_and_drop_blanks():
    assert parse_methods(" al, bp ,,scpl") == ["al", "bp", "scpl"]
    assert parse_seeds("4, 0,,2") == [4, 0, 2]
    assert parse_methods(",".join(METHODS)) == list(METHODS)


@pytest.mark.parametrize("value, message", [
    ("bp,scp", "unknown method 'scp' (did you mean 'scpl'?)"),
    ("bp,sgd", "unknown method 'sgd'; give distinct names from bp,scpl,early_exit,deinforeg,al"),
    ("", "unknown (none given)"),
    ("bp,scpl,bp", "'bp' repeats"),
])
def test_bad_method_lists_get_one_line_naming_the_choices(value, message):
    with pytest.raises(UserError) as err:
        parse_methods(value)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value, message", [
    ("0,a", "give distinct integers separated by commas, e.g. seeds=100,101"),
    (" , ", "none given"),
    ("1,2,1", "1 repeats"),
])
def test_bad_seed_lists_get_one_line_with_the_example(value, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        parse_seeds(value, example="100,101")


def test_train_command_is_this_python_or_the_launcher_then_the_module():
    assert train_command("r.yaml", ["a=1", "b=2"]) == [sys.executable, "-m", "nlp_decouple.train", "r.yaml", "a=1",
                                                         "b=2"]
    assert train_command("r.yaml", ["a=1"], launcher="accelerate launch --num_processes 2") == [
        "accelerate", "launch", "--num_processes", "2", "-m", "nlp_decouple.train", "r.yaml", "a=1"]


def test_run_training_appends_output_to_the_log_with_the_env_and_returns_the_exit_code(tmp_path, monkeypatch):
    # a fake ``python``: prints its arguments and the environment the runner sets, exits with a chosen code
    fake = tmp_path / "fake-python"
    fake.write_text('#!/bin/sh\necho "args: $*"\necho "env: $OMP_NUM_THREADS $TOKENIZERS_PARALLELISM $EXTRA"\n'
                    'pwd\nexit 3\n')
    fake.chmod(0o755)
    log = tmp_path / "run" / "train.log"
    log.parent.mkdir()
    log.write_text("earlier attempt\n")
    code = run_training("r.yaml", ["train.seed=1"], log, launcher=str(fake), threads=2, env={"EXTRA": "x"},
                        cwd=tmp_path)
    assert code == 3
    assert log.read_text().splitlines() == ["earlier attempt", "args: -m nlp_decouple.train r.yaml train.seed=1",
                                            "env: 2 false x", str(tmp_path)]
