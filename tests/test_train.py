"""End to end: the CLI on real AG News with the Hub tokenizer, and short in-process runs that learn."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import AG_NEWS, HF_CACHE, HUB_TOKENIZER, REPO, need

AG_RECIPE = REPO / "recipes" / "agnews_transformer.yaml"
RESULT_KEYS = {"test_accuracy", "test_macro_f1", "best_epoch", "peak_memory_mb", "train_samples_per_s",
               "num_parameters", "per_class", "confusion_matrix", "groups_at_best_epoch"}
AG_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
HUB = [f"tokenizer.name={HUB_TOKENIZER}", "tokenizer.train=null"]


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one intra-op thread, and a busy 2-core machine makes 2 OpenMP threads
    spin-wait for each other (runs 10-100x slower); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if HF_CACHE.is_dir():
        env["HF_HUB_CACHE"] = str(HF_CACHE)
    return env


# ---------------------------------------------------------------------------------------- the CLI


@need(AG_NEWS)
@need(HF_CACHE)
@need(AG_RECIPE)
def test_cli_on_ag_news_writes_every_artifact(tmp_path, tiny_overrides):
    run_name = "cli"
    cmd = [sys.executable, "-m", "nlp_decouple.train", str(AG_RECIPE), f"data.path={AG_NEWS}", *HUB,
           "train.max_steps=3", "train.epochs=1", "data.max_train_samples=256", "data.max_eval_samples=120",
           "train.eval_batch_size=64", f"run_name={run_name}", *tiny_overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / run_name
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert Path(summary["run_dir"]).resolve() == run_dir.resolve()

    results = json.loads((run_dir / "results.json").read_text())
    assert RESULT_KEYS <= set(results)
    assert summary["test_accuracy"] == results["test_accuracy"]
    assert 0.0 <= results["test_accuracy"] <= 1.0 and 0.0 <= results["test_macro_f1"] <= 1.0
    assert results["best_epoch"] == 1 and results["steps"] == 3
    assert results["peak_memory_mb"] > 0 and results["train_samples_per_s"] > 0
    assert results["label_names"] == AG_LABELS
    assert set(AG_LABELS) <= set(results["per_class"])
    cm = np.asarray(results["confusion_matrix"])
    assert cm.shape == (4, 4) and cm.sum() == results["data"]["test"] == 120
    # the confusion matrix and the reported accuracy tell the same story
    assert np.trace(cm) / cm.sum() == pytest.approx(results["test_accuracy"])
    groups = results["groups_at_best_epoch"]  # scpl (the recipe's method), embedding + 2 blocks
    assert [g["group"] for g in groups] == [0, 1, 2]
    assert [g["kind"] for g in groups] == ["probe", "probe", "exit"]
    assert groups[-1]["test"] == pytest.approx(results["test_accuracy"])

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["epoch"] == 1 and rows[0]["step"] == 3
    assert len(rows[0]["train_loss"]) == 3 and all(np.isfinite(rows[0]["train_loss"]))
    assert {"validation", "test", "groups"} <= set(rows[0])

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["tokenizer"]["name"] == HUB_TOKENIZER and saved["tokenizer"]["train"] is None
    assert saved["model"]["hidden_size"] == 32 and saved["train"]["max_steps"] == 3
    assert saved["method"]["name"] == "scpl" and saved["data"]["path"] == str(AG_NEWS)

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    assert len(tok) == 30522 and tok.pad_token_id == 0  # the MiniLM (BERT uncased) vocabulary
    assert tok("Hello world")["input_ids"][0] == tok.cls_token_id

    weights = load_file(str(run_dir / "best" / "model.safetensors"))
    from nlp_decouple.config import load_config
    from nlp_decouple.model import StagedClassifier, count_parameters
    cfg = load_config(run_dir / "config.yaml")
    model = StagedClassifier.from_config(cfg, len(tok), tok.pad_token_id, 4, 60)
    assert count_parameters(model) == results["num_parameters"]
    model.load_state_dict(weights, strict=True)  # every tensor present, with the right shape
    assert weights["stages.0.groups.0.blocks.0.embed.weight"].shape == (30522, 32)


def test_cli_rejects_a_bad_override_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nlp_decouple.train", str(REPO / "recipes" / "quickstart.yaml"),
                           "method.name=sgd", f"output_dir={tmp_path}"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "method.name" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ short runs that learn (synthetic)
