"""Shared fixtures: where the real offline data lives, and small configs for fast runs."""
from __future__ import annotations

import os
import subprocess
import sys
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


class _ForkedTrainCommands:
    """Stands in for the ``subprocess`` module inside nlp_decouple.sweeps: the exact command compare builds
    for a run, ``python -m nlp_decouple.train ...`` with its output appended to the run's train.log, runs as a
    fork of the train_forks server (same arguments, environment, working folder and log; its exit code
    returned) instead of a fresh interpreter that would spend seconds importing. Any other command runs for real,
    so a wrong command still fails."""

    def __init__(self, forks):
        self.forks = forks

    def __getattr__(self, name):
        return getattr(subprocess, name)

    def run(self, cmd, *args, env=None, stdout=None, stderr=None, cwd=None, check=False, **kwargs):
        if (args or kwargs or check or list(cmd[:3]) != [sys.executable, "-m", "nlp_decouple.train"]
                or not hasattr(stdout, "name") or stderr is not subprocess.STDOUT):
            return subprocess.run(cmd, *args, env=env, stdout=stdout, stderr=stderr, cwd=cwd, check=check, **kwargs)
        stdout.flush()
        pid = self.forks.start(list(cmd[3:]), Path(stdout.name), env=env, append=True, cwd=Path(cwd or Path.cwd()))
        return subprocess.CompletedProcess(cmd, self.forks.wait(pid))


def run_sweep(out: Path, methods=SWEEP_METHODS, seeds=SWEEP_SEEDS, extra=(), forks=None) -> None:
    """compare's sweep; with ``forks`` (the train_forks fixture) each run is a fork rather than a fresh
    interpreter (_ForkedTrainCommands)."""
    from nlp_decouple import sweeps
    from nlp_decouple.cli.compare import main

    with pytest.MonkeyPatch.context() as patch:
        if forks is not None:
            patch.setattr(sweeps, "subprocess", _ForkedTrainCommands(forks))
        assert main([str(REPO / "recipes" / "quickstart.yaml"), f"methods={','.join(methods)}",
                     f"seeds={','.join(map(str, seeds))}", *SWEEP_OVERRIDES, *extra, "--out", str(out),
                     "--jobs", "2"]) == 0


# Tests that take many seconds each (subprocesses, several training runs), longest first. Their modules are
# moved to the front of the collection (and they to the front of their module) so that pytest-xdist hands
# them out first and the two workers end together, instead of one worker finishing a long test alone at
# the end of the run. Order only: nothing is left out.
SLOW_FIRST = ["tests/engines/test_processes.py::test_two_and_three", "tests/engines/test_processes_2d.py::",
              "tests/methods/test_al.py::test_short_run_on_ag", "tests/methods/test_al.py::test_short_lstm",
              "tests/test_checkpoint.py::test_sigkill_and_resume", "tests/test_sampler_resume.py::",
              "tests/cli/test_train.py::test_tiny_transformer", "tests/test_config.py::test_cli_unreachable_hub",
              "tests/cli/test_tune.py::test_tune_resumes", "tests/engines/test_processes.py::test_resume",
              "tests/cli/test_train.py::test_cli_on_ag_news", "tests/losses/test_supcon_gather.py::",
              "tests/models/test_pretrained.py::test_train_cli", "tests/models/test_pretrained.py::test_a_family_trains",
              "tests/test_benchmarks.py::test_process_pipeline",
              "tests/cli/test_train.py::test_short_run", "tests/cli/test_train.py::test_best_checkpoint",
              "tests/test_distributed.py::", "tests/test_extras.py::test_train_evaluate_and_predict",
              "tests/test_card.py::"]


def _slow_rank(nodeid: str) -> int:
    return next((i for i, prefix in enumerate(SLOW_FIRST) if nodeid.startswith(prefix)), len(SLOW_FIRST))


def _group_name(item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    return None if mark is None else str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest -n 2 --dist loadgroup, the tests that read the session's tiny sweep run in one worker, so
    the sweep trains once rather than once per worker; the slowest tests are handed out first."""
    for item in items:
        if "tiny_sweep" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tiny_sweep"))
    # a module's tests stay together (its module-scoped fixtures are set up once), slow modules first
    module_rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        module_rank[module] = min(module_rank.get(module, len(SLOW_FIRST)), _slow_rank(item.nodeid))
    items.sort(key=lambda item: (module_rank[item.nodeid.split("::")[0]], _slow_rank(item.nodeid)))  # stable


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session):
    """pytest-xdist (3.8) groups a worker's tests by appending "@group" to each marked test's id through
    ``item._nodeid``, which this pytest (9.x: ids live in ``item._id``) no longer reads: every grouped test
    was then scheduled on its own and each worker trained the tiny sweep. Append the suffix where xdist's
    did not take, before the worker reports its collection (xdist's own collection_finish hook)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        group = _group_name(item)
        if group is None or item.nodeid.endswith(f"@{group}") or not hasattr(item, "_id"):
            continue
        item._id = type(item._id).parse(f"{item.nodeid}@{group}")


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, train_forks) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    run_sweep(out, forks=train_forks)
    return out


@pytest.fixture(scope="session")
def train_forks():
    """Training runs forked from one interpreter that has imported the trainer once (tests/_train_forks.py):
    each run is a process of its own that can be killed, without a fresh interpreter's imports."""
    from _train_forks import TrainForks

    forks = TrainForks(REPO, {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    yield forks
    forks.close()
