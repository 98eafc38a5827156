"""A finished run's results.json: the test scores at the best-validation epoch, cost, and provenance."""
from __future__ import annotations

import platform
import resource

import accelerate
import datasets
import sklearn
import tokenizers
import torch
import transformers

from .config import Config, group_sizes
from .provenance import code_version
from .state import TrainState


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "tokenizers": tokenizers.__version__,
            "accelerate": accelerate.__version__, "scikit-learn": sklearn.__version__}


def build_results(state: TrainState, cfg: Config, *, device: torch.device, num_processes: int, num_parameters: int,
                  label_names: list[str], data_stats: dict, probe_set: dict, word_vector_coverage: float | None,
                  data_fingerprint: str) -> dict:
    best, last = state.best, state.history[-1]
    # early stopping ended the run after its last epoch (not train.epochs or max_steps)
    stopped = state.out_of_patience(cfg.train.early_stopping_patience) and last["epoch"] < cfg.train.epochs
    memory, memory_kind = peak_memory_mb(device)
    test = best["test"] or {}  # eval.test=false (tuning): no test scores at all
    return {
        "best_epoch": best["epoch"],
        "validation_accuracy": best["validation"]["accuracy"],
        "test_accuracy": test.get("accuracy"),
        "test_macro_f1": test.get("macro_f1"),
        "last_epoch_test_accuracy": (last["test"] or {}).get("accuracy"),
        "groups_at_best_epoch": best.get("groups"),
        **state.best_report,
        "label_names": label_names,
        "epochs_run": len(state.history),
        "stopped_early_at_epoch": last["epoch"] if stopped else None,
        "steps": state.step,
        "train_time_s": state.train_time,
        "time_per_epoch_s": state.train_time / len(state.history),
        "train_samples_per_s": state.samples / state.train_time if state.train_time else None,
        "peak_memory_mb": memory,
        "peak_memory_kind": memory_kind,
        "num_parameters": num_parameters,
        "nonfinite_steps": state.nonfinite_total,
        "word_vector_coverage": word_vector_coverage,
        "method": cfg.method.name,
        "encoder": cfg.model.encoder,
        "group_sizes": group_sizes(cfg),
        "seed": cfg.train.seed,
        "num_processes": num_processes,
        "device": str(device),
        "data": data_stats,
        "probe_set": probe_set,  # the texts behind the probes and the standardiser refresh: size, class coverage
        "versions": versions(),
        "code_version": code_version(),  # with data_fingerprint, part of what a run must share to be reused
        "data_fingerprint": data_fingerprint,
    }
