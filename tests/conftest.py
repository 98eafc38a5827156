"""Shared fixtures: where the real offline data lives, and small configs for fast runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NLP_DECOUPLE_SHARED", REPO.parent / "shared")).resolve()
AG_NEWS = SHARED / "datasets" / "ag_news_7600"
IMDB = SHARED / "datasets" / "imdb_999"
RAW = SHARED / "datasets" / "raw"
HF_CACHE = SHARED / "hf-cache"
HUB_TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never touch the network; the Hub tokenizer comes from the shared cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    if HF_CACHE.is_dir():
        monkeypatch.setenv("HF_HUB_CACHE", str(HF_CACHE))


def need(path: Path):
    """Skip (with the reason) when a piece of ../shared is absent; CI has it."""
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not found: set NLP_DECOUPLE_SHARED to the shared data folder")


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """Overrides that make any recipe run in seconds on CPU."""
    return [f"output_dir={tmp_path}", "train.progress=false", "model.hidden_size=32", "model.num_heads=2",
            "model.ffn_size=64", "model.num_layers=2", "train.batch_size=32", "eval.probe_samples=200"]


# huggingface_hub and datasets read these variables once, when first imported (often while test modules
# are collected, before any fixture runs): set them here too, or the autouse fixture above comes too late
# and a Hub lookup goes online (retrying for a minute) instead of to the shared cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if HF_CACHE.is_dir():
    os.environ["HF_HUB_CACHE"] = str(HF_CACHE)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one pytest worker per core (pytest -n 2): each keeps to one intra-op thread, so two workers do not
    # oversubscribe the cores (two OpenMP pools spin-waiting on each other are 10-100x slower)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Run torch on one intra-op thread for the test, then restore. Tiny models are fastest on one
    thread, and on a busy 2-core machine two OpenMP threads spin-wait for each other (10-100x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# a tiny comparison sweep (real runs, seconds each), shared by the compare/report/evaluate/predict tests
SWEEP_METHODS = ["bp", "early_exit", "al"]
SWEEP_SEEDS = [0, 1]
SWEEP_OVERRIDES = ["train.epochs=2", "data.synthetic_train_size=400", "data.synthetic_test_size=200",
                   "model.hidden_size=16", "tokenizer.vocab_size=200", "eval.probe_samples=100"]


def run_sweep(out: Path, methods=SWEEP_METHODS, seeds=SWEEP_SEEDS, extra=()) -> None:
    from nlp_decouple.cli.compare import main

    assert main([str(REPO / "recipes" / "quickstart.yaml"), f"methods={','.join(methods)}",
                 f"seeds={','.join(map(str, seeds))}", *SWEEP_OVERRIDES, *extra, "--out", str(out), "--jobs", "2"]) == 0


def pytest_collection_modifyitems(config, items):
    """Under pytest -n 2 --dist loadgroup, the tests that read the session's tiny sweep run in one worker, so
    the sweep trains once rather than once per worker."""
    for item in items:
        if "tiny_sweep" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tiny_sweep"))


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    run_sweep(out)
    return out
