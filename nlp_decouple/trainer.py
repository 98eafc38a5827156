"""The method-agnostic Accelerate training loop.

The method decides the stages and where gradients stop; the trainer only runs them:
- ``bp``: one stage, one loss, one backward through everything;
- decoupled, ``method.backward=per_group``: each stage backpropagates its local loss and steps its own
  optimizer as soon as the loss exists, freeing that stage's graph before the next stage runs;
- decoupled, ``method.backward=sum``: the detached local losses are summed into one backward (exactly
  the same gradients, since no gradient crosses a cut) and one optimizer with a group per stage steps.
Each stage is prepared (DDP-wrapped) on its own, so several backwards per step stay in sync across ranks.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import resource
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import accelerate
import datasets
import numpy as np
import sklearn
import tokenizers
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import complete_checkpoints, find_resume_point, load_checkpoint, save_checkpoint
from .config import Config, group_sizes, save_config
from .data import load_text_data, make_collator, tokenize_splits
from .data.sampling import ClassGroupedBatchSampler
from .errors import UserError
from .hf import DecoupledForSequenceClassification, save_model_dir
from .metrics import classification_metrics, collect, detailed_report, layerwise
from .classifier import StagedClassifier, count_parameters
from .optim import build_optimization
from .pipeline import GPipeBP, PipelineRunner, assign_devices, assign_workers, place_stages
from .models import load_word_vectors
from .tokenization import build_tokenizer, save_tokenizer

log = logging.getLogger("nlp_decouple")


class NonFiniteLoss(UserError):
    pass


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "tokenizers": tokenizers.__version__,
            "accelerate": accelerate.__version__, "scikit-learn": sklearn.__version__}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
        elif v is not None:
            out[f"{prefix}{k}"] = str(v)
    return out


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        t = cfg.train
        self.run_dir = cfg.run_dir()
        self.accelerator = Accelerator(mixed_precision=t.mixed_precision, cpu=t.cpu,
                                       log_with=t.log_with or None, project_dir=str(self.run_dir))
        acc = self.accelerator
        if t.num_processes is not None and acc.num_processes != t.num_processes:
            raise UserError(f"train.num_processes={t.num_processes} but {acc.num_processes} process(es) were "
                            "launched; on CPU use `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
                            f"--num_processes {t.num_processes} ...` or torchrun --nproc_per_node {t.num_processes}")
        set_seed(t.seed, deterministic=t.deterministic)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        acc.wait_for_everyone()
        self._prepare_data()
        self._build_model()

    # ------------------------------------------------------------------ set-up
    def _prepare_data(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        with acc.main_process_first():
            self.data = load_text_data(cfg.data, cfg.train.seed)
            train_texts = self.data.splits["train"]["text"] if cfg.tokenizer.train else None
            self.tokenizer = build_tokenizer(cfg.tokenizer, train_texts)
            tokenized = tokenize_splits(self.data.splits, self.tokenizer, self.data.max_length)
        if acc.is_main_process:
            save_tokenizer(self.tokenizer, self.run_dir / "tokenizer")
        collator = make_collator(self.tokenizer)
        t = cfg.train
        self.shuffle_generator = torch.Generator().manual_seed(t.seed)  # re-seeded every epoch
        loader = lambda split, bs, shuffle=False: DataLoader(  # noqa: E731
            split, batch_size=bs, shuffle=shuffle, collate_fn=collator, num_workers=cfg.data.num_workers,
            generator=self.shuffle_generator if shuffle else None)
        if cfg.data.sampler == "random":
            self.train_loader = loader(tokenized["train"], t.batch_size, shuffle=True)
        else:  # batches of samples_per_class texts per class, drawn from the same per-epoch generator
            sampler = ClassGroupedBatchSampler(self.data.splits["train"]["label"], t.batch_size,
                                               cfg.data.samples_per_class, self.shuffle_generator,
                                               balanced=cfg.data.sampler == "class_balanced")
            self.train_loader = DataLoader(tokenized["train"], batch_sampler=sampler, collate_fn=collator,
                                           num_workers=cfg.data.num_workers)
        splits = ("validation", "test") if cfg.eval.test else ("validation",)  # tuning never reads test
        self.eval_loaders = {name: loader(tokenized[name], t.eval_batch_size) for name in splits}
        probe_n = min(cfg.eval.probe_samples, len(tokenized["train"]))
        self.probe_loader = loader(tokenized["train"].select(range(probe_n)), t.eval_batch_size)

    def _build_model(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        tok = self.tokenizer
        self.model = StagedClassifier.from_config(cfg, len(tok), tok.pad_token_id, self.data.num_classes,
                                                  self.data.max_length)
        self.word_vector_coverage = None
        if cfg.model.word_vectors:
            self.word_vector_coverage = load_word_vectors(self.model.embedding, cfg.model.word_vectors, tok.get_vocab())
        if cfg.model.freeze_embeddings:
            self.model.embedding.weight.requires_grad_(False)
        t = cfg.train
        per_group = self.model.decoupled and cfg.method.backward == "per_group"
        # the loader is sharded after prepare(): each process makes ceil(len / num_processes) updates an epoch
        opt = build_optimization(list(self.model.stages), t, per_group,
                                 math.ceil(len(self.train_loader) / acc.num_processes))
        self.optimizer_of = opt.optimizer_of
        # every trainable stage prepared on its own: a DDP wrapper per stage, one backward per wrapper per step
        self.train_stages = [acc.prepare(stage) if k in self.optimizer_of else stage.to(acc.device)
                             for k, stage in enumerate(self.model.stages)]
        self.optimizers = [acc.prepare(o) for o in opt.optimizers]
        self.schedulers = opt.schedulers  # not prepared: see nlp_decouple.optim
        self.train_loader = acc.prepare(self.train_loader)
        self.eval_loaders = {k: acc.prepare(v) for k, v in self.eval_loaders.items()}
        self.probe_loader = acc.prepare(self.probe_loader)
        self.per_group = per_group
        self.runner = self.gpipe = None
        if t.pipeline:
            self._build_pipeline()

    def _build_pipeline(self) -> None:
        """Place the stages (bp: its groups) on devices; a worker thread per stage trains them."""
        acc, t = self.accelerator, self.cfg.train
        if acc.num_processes != 1:
            raise UserError("train.pipeline runs in one process (its stages are the parallelism): launch "
                            "without --num_processes, or set train.pipeline=false for data parallel")
        if self.model.decoupled:
            devices = assign_devices(t.devices, len(self.model.stages))
            place_stages(self.model.stages, devices)  # also moves a carry arriving at each stage (evaluation)

            def update(k: int, loss: torch.Tensor) -> None:
                if k in self.optimizer_of:
                    self._update(self.optimizer_of[k], [k], loss)

            workers = assign_workers(t.devices, len(self.model.stages))  # [cpu, cpu]: 2 threads, not 1 per stage
            self.runner = PipelineRunner(self.model.stages, devices, update, queue_size=t.queue_size,
                                         threads_per_stage=t.threads_per_stage, move_stages=False, workers=workers)
        else:
            stage = self.model.stages[0]
            devices = assign_devices(t.devices, len(stage.groups))
            self.gpipe = GPipeBP(stage, devices, t.micro_batches, backward=acc.backward,
                                 threads_per_partition=t.threads_per_stage, queue_size=t.queue_size)
            first = devices[0]
            stage.register_forward_pre_hook(  # evaluation feeds the first partition's device
                lambda module, args, kwargs: ((args[0].to(first), *args[1:]), kwargs), with_kwargs=True)
        if self.runner:
            log.info("pipeline: stages on %s, worker threads running stages %s", [str(d) for d in devices],
                     self.runner.workers)
        else:
            log.info("pipeline: bp partitions on %s", [str(d) for d in devices])

    # ------------------------------------------------------------------ training
    def _clip(self, stage_ids: list[int]) -> None:
        if self.cfg.train.grad_clip is None:
            return
        for k in stage_ids:
            torch.nn.utils.clip_grad_norm_(self.model.stages[k].parameters(), self.cfg.train.grad_clip)

    def _update(self, opt_index: int, stage_ids: list[int], loss: torch.Tensor) -> None:
        acc = self.accelerator
        acc.backward(loss)
        acc.unscale_gradients(self.optimizers[opt_index])
        self._clip(stage_ids)
        self.optimizers[opt_index].step()
        self.schedulers[opt_index].step()
        self.optimizers[opt_index].zero_grad(set_to_none=True)

    def train_step(self, batch: dict) -> list[float]:
        """One batch through every stage; returns each stage's loss (nan where it was non-finite)."""
        values, pending = [], []
        stream = self.model.iter_stages(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                        stages=self.train_stages)
        for k, out in enumerate(stream):
            loss = out.loss
            finite = bool(torch.isfinite(loss.detach()))
            values.append(float(loss.detach()) if finite else math.nan)
            if not finite or k not in self.optimizer_of:  # skipped, or nothing to train in this stage
                continue
            if self.per_group:
                self._update(self.optimizer_of[k], [k], loss)
            else:
                pending.append(loss)
        # summed strategy: a non-finite stage loss skips the whole step (no backward ran yet)
        if pending and all(math.isfinite(v) for v in values):
            self._update(0, list(self.optimizer_of), sum(pending))
        return values

    def _gpipe_step(self, batch: dict) -> list[float]:
        value = self.gpipe.forward_backward(batch)
        if math.isfinite(value):
            self.accelerator.unscale_gradients(self.optimizers[0])
            self._clip([0])
            self.optimizers[0].step()
            self.schedulers[0].step()
        self.optimizers[0].zero_grad(set_to_none=True)
        return [value]

    def _steps(self, loader, p: dict):
        """Yield ``(batch, stage losses, at_boundary)`` for each training step of the epoch.

        ``at_boundary``: every stage has finished every batch so far (always, but inside a pipeline
        chunk), so a checkpoint taken now is consistent. The pipeline runs in chunks that end at
        ``save_every`` multiples (or every 64 steps) and at ``max_steps``."""
        t = self.cfg.train
        if self.runner is None:
            step_fn = self._gpipe_step if self.gpipe is not None else self.train_step
            for batch in loader:
                self._seed_step(p["step"])
                yield batch, step_fn(batch), True
            return
        batches, step = iter(loader), p["step"]
        while True:
            chunk = (t.save_every - step % t.save_every) if t.save_every else 64
            if t.max_steps is not None:
                chunk = min(chunk, t.max_steps - step)
            done = 0
            for batch, values in self.runner.run(batches, limit=chunk, with_batch=True):
                done += 1
                step += 1
                yield batch, values, done == chunk
            if done < chunk or chunk == 0:
                return

    def _check_finite(self, values: list[float], p: dict) -> None:
        """Count non-finite losses (their updates were skipped); stop after too many in a row."""
        bad = [k for k, v in enumerate(values) if not math.isfinite(v)]
        if not bad:
            p["nonfinite_in_row"] = 0
            return
        p["nonfinite_total"] += 1
        p["nonfinite_in_row"] += 1
        log.warning("step %d: non-finite loss in stage(s) %s; update skipped", p["step"], bad)
        if p["nonfinite_in_row"] >= self.cfg.train.max_nonfinite:
            raise NonFiniteLoss(
                f"loss was non-finite in stage(s) {bad} for {p['nonfinite_in_row']} steps in a row "
                f"(step {p['step']}); lower train.lr, set train.grad_clip=1.0 or use train.mixed_precision=no"
                f" (checkpoints so far are in {self.run_dir / 'checkpoints'})")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        acc, cfg = self.accelerator, self.cfg
        every_group = cfg.eval.every_group
        outs = {name: collect(self.model, loader, acc, return_pooled=every_group)
                for name, loader in self.eval_loaders.items()}
        result = {name: classification_metrics(o.labels, o.final_logits) for name, o in outs.items()}
        if every_group:
            needs_probe = len(outs["validation"].exit_logits) < len(outs["validation"].pooled)
            probe_train = collect(self.model, self.probe_loader, acc, return_pooled=True) if needs_probe else None
            result["groups"] = layerwise(probe_train, outs, cfg.eval.probe_max_iter, cfg.train.seed)
        result["_outputs"] = outs
        return result

    # ------------------------------------------------------------------ checkpoints
    def _fingerprint(self) -> dict:
        """What a checkpoint must share with this run to be resumed."""
        c = self.cfg
        return {**_flat(vars(c.model), "model."), **_flat(vars(c.method), "method."), "data.name": c.data.name,
                "num_classes": self.data.num_classes, "vocab_size": len(self.tokenizer),
                "train.batch_size": c.train.batch_size, "num_processes": self.accelerator.num_processes}

    def _checkpoint(self, progress: dict) -> None:
        state = {**progress, "fingerprint": self._fingerprint()}
        path = save_checkpoint(self.accelerator, self.run_dir / "checkpoints", progress["step"], state,
                               self.cfg.train.keep_checkpoints)
        log.info("checkpoint %s", path)

    def _resume_state(self) -> dict | None:
        resume = self.cfg.train.resume
        if resume is None:
            if self.accelerator.is_main_process and complete_checkpoints(self.run_dir / "checkpoints"):
                # a fresh run replaces this run directory's results; stale checkpoints would be resumed later
                log.warning("starting afresh: removing the earlier checkpoints in %s (train.resume=auto continues "
                            "a run instead)", self.run_dir / "checkpoints")
                shutil.rmtree(self.run_dir / "checkpoints")
            self.accelerator.wait_for_everyone()
            return None
        path = find_resume_point(resume, self.run_dir / "checkpoints")
        if path is None:
            log.info("train.resume=auto: no checkpoint yet, starting afresh")
            return None
        state = load_checkpoint(self.accelerator, path, self._fingerprint())
        log.info("resumed from %s (epoch %d, %d batches into it)", path, state["epoch"], state["batches_done"])
        return state

    # ------------------------------------------------------------------ main loop
    def _seed_step(self, step: int) -> None:
        # randomness (dropout) depends only on (seed, step, rank): a resumed run draws the same masks
        torch.manual_seed(self.cfg.train.seed * 1_000_003 + step * 1009 + self.accelerator.process_index)

    def fit(self, on_epoch: Callable[[dict], None] | None = None) -> dict:
        """Train; ``on_epoch(row)`` is called on every process after each epoch's evaluation with that
        epoch's metrics row (e.g. an Optuna pruner; an exception it raises ends training there)."""
        cfg, acc = self.cfg, self.accelerator
        t = cfg.train
        if t.log_with:
            acc.init_trackers("nlp_decouple", config=_flat(cfg.to_dict()))
        if acc.is_main_process:
            log.info("run directory %s; data %s; %d parameters; groups %s", self.run_dir, self.data.stats,
                     count_parameters(self.model), group_sizes(cfg))
        p = {"epoch": 1, "batches_done": 0, "step": 0, "samples": 0, "train_time": 0.0, "history": [],
             "best": None, "best_report": None, "epoch_losses": [], "nonfinite_total": 0, "nonfinite_in_row": 0}
        p.update(self._resume_state() or {})
        p.pop("fingerprint", None)
        metrics_path = self.run_dir / "metrics.jsonl"
        if acc.is_main_process:  # rewritten from the history, so a resumed run's file equals an uninterrupted one's
            metrics_path.write_text("".join(json.dumps(row) + "\n" for row in p["history"]))
        stop = _StopSignal()
        done = t.max_steps is not None and p["step"] >= t.max_steps
        while p["epoch"] <= t.epochs and not done:
            epoch = p["epoch"]
            self.model.train()
            self.shuffle_generator.manual_seed(t.seed * 7919 + epoch)  # the epoch's order, also after a resume
            loader = self.train_loader
            if p["batches_done"]:
                loader = acc.skip_first_batches(loader, p["batches_done"])
            bar = tqdm(loader, desc=f"epoch {epoch}/{t.epochs}", initial=p["batches_done"], total=len(self.train_loader),
                       disable=not (acc.is_local_main_process and t.progress), leave=False)
            start = time.perf_counter()
            for batch, values, at_boundary in self._steps(bar, p):
                p["step"] += 1
                p["batches_done"] += 1
                p["samples"] += batch["labels"].shape[0] * acc.num_processes
                self._check_finite(values, p)
                p["epoch_losses"].append(values)
                bar.set_postfix(loss=" ".join(f"{v:.3f}" for v in values))
                if t.log_with and p["step"] % 10 == 0:
                    acc.log({f"train/loss_stage{k}": v for k, v in enumerate(values)}, step=p["step"])
                done = t.max_steps is not None and p["step"] >= t.max_steps
                if at_boundary and (stop.requested or (t.save_every and p["step"] % t.save_every == 0 and not done
                                                       and p["batches_done"] < len(self.train_loader))):
                    p["train_time"] += time.perf_counter() - start
                    start = time.perf_counter()
                    self._checkpoint(p)
                if stop.requested and at_boundary:
                    stop.restore()
                    raise UserError(f"stopped by {stop.requested}; checkpoint saved: continue with the same "
                                    "command and train.resume=auto")
                if done:
                    break
            epoch_time = time.perf_counter() - start
            p["train_time"] += epoch_time
            self._end_epoch(p, epoch_time, metrics_path)
            if on_epoch is not None:
                on_epoch(p["history"][-1])
            p["epoch"] += 1
            p["batches_done"] = 0
            p["epoch_losses"] = []
            self._checkpoint(p)
        stop.restore()
        if self.runner is not None:
            self.runner.close()
        if acc.is_main_process:
            self._save_weights("last")
        results = self._results(p)
        if acc.is_main_process:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        acc.end_training()
        return results

    def _end_epoch(self, p: dict, epoch_time: float, metrics_path: Path) -> None:
        acc, t = self.accelerator, self.cfg.train
        epoch = p["epoch"]
        evaluation = self.evaluate()
        outs = evaluation.pop("_outputs")
        losses = np.nanmean(np.asarray(p["epoch_losses"], dtype=float), axis=0).tolist() if p["epoch_losses"] else []
        row = {"epoch": epoch, "step": p["step"], "train_loss": losses, "epoch_time_s": epoch_time,
               "validation": evaluation["validation"], "test": evaluation.get("test")}
        if "groups" in evaluation:
            row["groups"] = evaluation["groups"]
        p["history"].append(row)
        val_acc = evaluation["validation"]["accuracy"]
        improved = p["best"] is None or val_acc > p["best"]["validation"]["accuracy"]
        if improved:
            p["best"] = row
            p["best_report"] = (detailed_report(outs["test"].labels, outs["test"].final_logits, self.data.label_names)
                                if "test" in outs else {})
        if acc.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            test_text = f", test acc {evaluation['test']['accuracy']:.4f}" if "test" in evaluation else ""
            log.info("epoch %d: val acc %.4f%s (%.1fs)%s", epoch, val_acc, test_text, epoch_time,
                     "  * best" if improved else "")
            if improved:
                self._save_weights("best")
                if "test" in outs:  # per-example predictions: paired comparisons between runs (report)
                    test = outs["test"]
                    (self.run_dir / "test_predictions.json").write_text(json.dumps(
                        {"epoch": epoch, "labels": test.labels.tolist(),
                         "predictions": test.final_logits.argmax(-1).tolist()}))
        if t.log_with:
            acc.log({"val/accuracy": val_acc, **({"test/accuracy": evaluation["test"]["accuracy"]}
                                                 if "test" in evaluation else {})}, step=p["step"])

    def _results(self, p: dict) -> dict:
        cfg, acc = self.cfg, self.accelerator
        best, history = p["best"], p["history"]
        memory, memory_kind = peak_memory_mb(acc.device)
        return {
            "best_epoch": best["epoch"],
            "validation_accuracy": best["validation"]["accuracy"],
            "test_accuracy": best["test"]["accuracy"] if best["test"] else None,
            "test_macro_f1": best["test"]["macro_f1"] if best["test"] else None,
            "last_epoch_test_accuracy": history[-1]["test"]["accuracy"] if history[-1]["test"] else None,
            "groups_at_best_epoch": best.get("groups"),
            **p["best_report"],
            "label_names": self.data.label_names,
            "epochs_run": len(history),
            "steps": p["step"],
            "train_time_s": p["train_time"],
            "time_per_epoch_s": p["train_time"] / len(history),
            "train_samples_per_s": p["samples"] / p["train_time"] if p["train_time"] else None,
            "peak_memory_mb": memory,
            "peak_memory_kind": memory_kind,
            "num_parameters": count_parameters(self.model),
            "nonfinite_steps": p["nonfinite_total"],
            "word_vector_coverage": self.word_vector_coverage,
            "method": cfg.method.name,
            "encoder": cfg.model.encoder,
            "group_sizes": group_sizes(cfg),
            "seed": cfg.train.seed,
            "num_processes": acc.num_processes,
            "device": str(acc.device),
            "data": self.data.stats,
            "versions": versions(),
        }

    def _save_weights(self, tag: str) -> None:
        """The model in Hugging Face form (config.json, model.safetensors, tokenizer): see nlp_decouple.hf."""
        tok = self.tokenizer
        hf_model = DecoupledForSequenceClassification.from_staged(
            self.model, self.cfg, len(tok), tok.pad_token_id, self.data.max_length, self.data.label_names)
        save_model_dir(hf_model, tok, self.run_dir / tag)


class _StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary, then exits."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
