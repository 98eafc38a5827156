"""Code versions and data fingerprints: what ties a run to the code and data that made it."""
from __future__ import annotations

import hashlib
import subprocess

import pandas as pd
import pytest
from datasets import Dataset

from conftest import REPO
from nlp_decouple import provenance
from nlp_decouple.config import load_config
from nlp_decouple.data import load_text_data
from nlp_decouple.provenance import code_version, data_fingerprint, stale_reason


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.fixture
def package_in(monkeypatch):
    """Point code_version at another folder (the package of a throw-away repository, or no repository)."""
    def point(folder):
        monkeypatch.setattr(provenance, "PACKAGE_DIR", folder)
        code_version.cache_clear()
        return folder

    yield point
    code_version.cache_clear()


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "docs.md").write_text("docs\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def _tree(repo) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD:pkg"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_code_version_is_the_package_tree_and_a_hash_of_its_uncommitted_changes(repo, package_in):
    package_in(repo / "pkg")
    clean = code_version()
    assert clean["id"] == f"git:{_tree(repo)[:16]}" and clean["dirty"] is None and clean["tree"] == _tree(repo)
    # a commit that touches only files outside the package keeps the version (its runs stay reusable)
    (repo / "docs.md").write_text("more docs\n")
    _git(repo, "commit", "-qam", "docs")
    code_version.cache_clear()
    assert code_version()["id"] == clean["id"] and code_version()["commit"] != clean["commit"]
    # an uncommitted edit of the package: a hash of the diff, which tells two edits apart
    ids = set()
    for text in ("x = 2\n", "x = 3\n"):
        (repo / "pkg" / "a.py").write_text(text)
        code_version.cache_clear()
        ids.add(code_version()["id"])
    assert len(ids) == 2 and all(i.startswith(clean["id"] + "+dirty:") for i in ids)
    # an untracked module counts too; committing it gives a new tree and a clean version
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / "pkg" / "b.py").write_text("y = 1\n")
    code_version.cache_clear()
    assert "+dirty:" in code_version()["id"]
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "b")
    code_version.cache_clear()
    assert code_version()["id"] == f"git:{_tree(repo)[:16]}" != clean["id"]


def test_outside_a_checkout_the_package_version_stands_for_the_code(tmp_path, package_in):
    package_in(tmp_path)
    version = code_version()
    assert version["id"] == f"package:{version['package_version']}" and version["commit"] is None


def test_this_checkout_is_versioned_by_its_package_tree():
    tree = subprocess.run(["git", "-C", str(provenance.PACKAGE_DIR), "rev-parse", "HEAD:./"], capture_output=True,
                          text=True)
    if tree.returncode != 0:
        pytest.skip("the package is not in a git checkout here")
    assert code_version()["id"].startswith(f"git:{tree.stdout.strip()[:16]}")


def _naive_fingerprint(splits: dict, names: list[str]) -> str:
    """The documented recipe, written out plainly."""
    parts = [name.encode() + b"\0" for name in ["labels", *names]]
    for split in sorted(splits):
        parts.append(b"\1split\0" + split.encode() + b"\0")
        for text in splits[split]["text"]:
            parts.append(len(text.encode()).to_bytes(8, "little") + text.encode())
        parts += [int(label).to_bytes(8, "little", signed=True) for label in splits[split]["label"]]
    return hashlib.sha256(b"".join(parts)).hexdigest()[:16]


def test_the_fingerprint_streams_arrow_splits_to_the_same_hash_as_plain_lists():
    plain = {"train": {"text": ["a b", "ç d", ""], "label": [0, 1, 1]}, "validation": {"text": ["e"], "label": [1]}}
    arrow = {name: Dataset.from_dict(columns) for name, columns in plain.items()}
    assert data_fingerprint(arrow, ["x", "y"]) == data_fingerprint(plain, ["x", "y"])
    assert data_fingerprint(plain, ["x", "y"]) == _naive_fingerprint(plain, ["x", "y"])  # one batch: the same bytes


def test_the_fingerprint_sees_every_text_label_split_and_label_name():
    base = {"train": {"text": ["ab", "c"], "label": [0, 1]}}
    changed = [
        {"train": {"text": ["a", "bc"], "label": [0, 1]}},  # the same characters, cut elsewhere
        {"train": {"text": ["ab", "c"], "label": [1, 0]}},
        {"train": {"text": ["c", "ab"], "label": [1, 0]}},  # order
        {"test": {"text": ["ab", "c"], "label": [0, 1]}},
    ]
    prints = {data_fingerprint(s, ["x", "y"]) for s in [base, *changed]} | {data_fingerprint(base, ["y", "x"])}
    assert len(prints) == 6


def test_the_same_data_gives_the_same_fingerprint_and_another_cap_another():
    def fingerprint(*overrides):
        cfg = load_config(REPO / "recipes" / "quickstart.yaml", ["data.synthetic_train_size=300", *overrides])
        data = load_text_data(cfg.data, cfg.train.seed)
        return data_fingerprint(data.splits, data.label_names)

    first = fingerprint()
    assert fingerprint() == first
    assert fingerprint("data.max_train_samples=100") != first
    assert fingerprint("train.seed=1") != first  # validation is carved per seed


@pytest.mark.parametrize("scores_test", [True, False])
def test_compare_fingerprints_the_data_as_the_trainer_loads_it(tmp_path, one_thread, scores_test):
    """reuse's fingerprint is the one a run records: the training file in any order (the trainer puts it in
    content order), the source's test split only when the run scores it (eval.test=false never reads it)."""
    from nlp_decouple import reuse
    from nlp_decouple.reuse import current_fingerprint
    from nlp_decouple.trainer import Trainer

    rows = [{"text": f"{['red', 'green', 'blue'][i % 3]} item {i}", "label": i % 3} for i in range(150)]
    for name, ordered in (("sorted", sorted(rows, key=lambda r: r["label"])), ("shuffled", rows)):
        (tmp_path / name / "data").mkdir(parents=True)
        pd.DataFrame(ordered).to_parquet(tmp_path / name / "data" / "train-00000-of-00001.parquet")
        pd.DataFrame(rows[:30]).to_parquet(tmp_path / name / "data" / "test-00000-of-00001.parquet")

    def cfg(name):
        return load_config(REPO / "recipes" / "quickstart.yaml", [
            "data.name=custom", f"data.path={tmp_path / name}", f"eval.test={str(scores_test).lower()}",
            "train.epochs=1", "train.progress=false", "model.hidden_size=8", "tokenizer.vocab_size=100",
            "eval.probe_samples=30", "eval.every_group=false", f"output_dir={tmp_path / 'runs'}", f"run_name={name}"])

    recorded = Trainer(cfg("sorted")).fit()["data_fingerprint"]
    assert current_fingerprint(cfg("sorted")) == recorded == current_fingerprint(cfg("shuffled"))
    if not scores_test:  # the test file is not read: a broken one changes nothing
        (tmp_path / "shuffled" / "data" / "test-00000-of-00001.parquet").write_bytes(b"not parquet")
        reuse._fingerprint.cache_clear()
        assert current_fingerprint(cfg("shuffled")) == recorded


def test_a_run_is_stale_when_its_code_or_data_differs_or_was_not_recorded():
    now = {"code": "git:aa", "data": "d1"}
    assert stale_reason(now, now) is None
    assert "other code" in stale_reason({**now, "code": "git:bb"}, now)
    assert "not recorded" in stale_reason({}, now)
    assert "other data" in stale_reason({**now, "data": "d2"}, now)
    assert stale_reason({**now, "data": "d2"}, {**now, "data": None}) is None  # data not computed: not checked
