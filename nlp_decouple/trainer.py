"""One training run: data, model, optimizers and an engine, driven by a short loop.

The loop's shape is Accelerate's: ``prepare``, train, evaluate on validation (and test) every epoch,
``save_state`` checkpoints, results at the best-validation epoch. The method decides the stages and where
gradients stop; the engine (:mod:`nlp_decouple.engines`) decides how they run. The loop asks the engine
for chunks of batches and acts (checkpoint, stop, evaluate) only between chunks, when no thread touches
weights; decisions that every process must share (stop on a signal, skip a non-finite update) are
agreed across ranks first.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .checkpoint import resume_point, save_checkpoint
from .classifier import StagedClassifier, count_parameters
from .card import write_model_card
from .config import Config, flatten, group_sizes, run_identity, save_config
from .data import TextData, build_loaders, draw_probe_set, load_text_data, tokenize_splits
from .engines import build_engine, data_replicas, prepare_stages
from .errors import UserError
from .extras import require_trackers
from .hf import DecoupledForSequenceClassification, save_model_dir
from .metrics import detailed_report, evaluate, write_predictions
from .models import load_word_vectors
from .optim import build_optimization
from .provenance import code_version, data_fingerprint
from .results import build_results
from .signals import StopRequested, StopSignal, any_rank
from .state import TrainState
from .tokenization import build_tokenizer, save_tokenizer

log = logging.getLogger("nlp_decouple")


class NonFiniteLoss(UserError):
    pass


def check_launch(acc: Accelerator, asked: int | None) -> None:
    """The processes Accelerate counts are the ones launched (and the ones asked for, if any)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != acc.num_processes:  # e.g. torchrun on a CPU machine: every rank would act as the main one
        raise UserError(f"{launched} processes were launched but Accelerate counts {acc.num_processes}; on a CPU "
                        "machine add train.cpu=true (or ACCELERATE_USE_CPU=1)")
    if asked is not None and acc.num_processes != asked:
        raise UserError(f"train.num_processes={asked} but {acc.num_processes} process(es) were launched; on CPU use "
                        f"`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {asked} ...` or "
                        f"torchrun --nproc_per_node {asked}")


def checkpoint_identity(trainer: "Trainer") -> dict:
    """What a checkpoint must share with this run to be resumed: every setting that changes what is computed
    (schedule included), the sizes the data and launch give, the optimizers' layout, and the code and data
    versions."""
    return {**run_identity(trainer.cfg), "num_classes": trainer.data.num_classes, "vocab_size": len(trainer.tokenizer),
            "num_processes": trainer.accelerator.num_processes, "optimizers": trainer.optimization.layout(),
            "code": code_version()["id"], "data": trainer.data_fingerprint}


def stop_request(stop: StopSignal, state: TrainState) -> StopRequested:
    """What ends training after the checkpoint just saved (every rank agreed on the stop)."""
    return StopRequested(f"stopped by {stop.requested or 'a signal to another process'} at step {state.step}; "
                         "checkpoint saved: continue with the same command and train.resume=auto")


def wait_limit(seconds: float) -> InitProcessGroupKwargs:
    # every collective of a multi-process run fails after train.timeout_s instead of hanging on a lost rank
    return InitProcessGroupKwargs(timeout=timedelta(seconds=seconds))


def end_process_group() -> None:
    """After this process's last run: end the process group a multi-process launch made. A run leaves it
    up, so that further runs in the process (compare under a launcher, tune's trials) reuse Accelerate's
    process-wide state as it is."""
    from accelerate import PartialState

    PartialState().destroy_process_group()


def save_model(directory: Path, tag: str, model: StagedClassifier, cfg: Config, tok: PreTrainedTokenizerBase,
               data: TextData, row: dict) -> None:
    """The model in Hugging Face form (config.json, model.safetensors, tokenizer: nlp_decouple.hf) with the
    model card of ``row``'s epoch (nlp_decouple.card); ``tag``: best or last."""
    hf_model = DecoupledForSequenceClassification.from_staged(model, cfg, len(tok), tok.pad_token_id, data.max_length,
                                                              data.label_names)
    save_model_dir(hf_model, tok, directory)
    write_model_card(directory, cfg, data, row, tag)


class Trainer:
    def __init__(self, cfg: Config):
        self.cfg, t = cfg, cfg.train
        self.run_dir = cfg.run_dir()
        require_trackers(t.log_with)
        self.accelerator = acc = Accelerator(mixed_precision=t.mixed_precision, cpu=t.cpu, log_with=t.log_with or None,
                                             project_dir=str(self.run_dir), kwargs_handlers=[wait_limit(t.timeout_s)])
        check_launch(acc, t.num_processes)
        set_seed(t.seed, deterministic=t.deterministic)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        acc.wait_for_everyone()
        with acc.main_process_first():
            self.data = load_text_data(cfg.data, t.seed, with_test=cfg.eval.test)
            self.data_fingerprint = data_fingerprint(self.data.splits, self.data.label_names)
            self.tokenizer = build_tokenizer(cfg.tokenizer, self.data.splits["train"]["text"] if cfg.tokenizer.train else None)
            tokenized = tokenize_splits(self.data.splits, self.tokenizer, self.data.max_length)
        if acc.is_main_process:
            save_tokenizer(self.tokenizer, self.run_dir / "tokenizer")
        # every rank draws the same rows (the training split is in content order, the draw seeded)
        self.probe = draw_probe_set(self.data.splits["train"]["label"], self.data.num_classes,
                                    cfg.eval.probe_samples, t.seed)
        self.loaders = build_loaders(tokenized, self.tokenizer, cfg, self.probe.indices)
        tok = self.tokenizer
        self.model = StagedClassifier.from_config(cfg, len(tok), tok.pad_token_id, self.data.num_classes,
                                                  self.data.max_length)
        self.word_vector_coverage = None
        if cfg.model.word_vectors:
            self.word_vector_coverage = load_word_vectors(self.model.embedding, cfg.model.word_vectors, tok.get_vocab())
        if cfg.model.freeze_embeddings:
            self.model.embedding.weight.requires_grad_(False)
        per_stage = self.model.decoupled and bool(t.pipeline)  # a pipeline steps each stage on its own
        # data parallel shards the loader: each process makes ceil(len / num_processes) updates an epoch; a
        # process pipeline shards it over its replicas, each rank of a replica seeing all of the replica's
        # batches (schedulers unprepared: one tick per update)
        self.replicas = data_replicas(t, acc.num_processes)
        self.optimization = build_optimization(list(self.model.stages), t, per_stage,
                                               math.ceil(len(self.loaders.train) / self.replicas),
                                               1 if t.pipeline == "processes" else self.replicas)
        train_stages = prepare_stages(cfg, self.model, self.optimization, self.loaders, acc)
        self.loaders.evals = {k: acc.prepare(v) for k, v in self.loaders.evals.items()}
        self.loaders.probe = acc.prepare(self.loaders.probe)
        self.engine = build_engine(cfg, self.model, train_stages, self.optimization, acc, self._seed_step)

    def _seed_step(self, step: int) -> None:
        # randomness (dropout) depends only on (seed, step, rank): a resumed run draws the same masks
        torch.manual_seed(self.cfg.train.seed * 1_000_003 + step * 1009 + self.accelerator.process_index)

    def fit(self, on_epoch: Callable[[dict], None] | None = None) -> dict:
        """Train; ``on_epoch(row)`` is called on every process after each epoch's evaluation with that
        epoch's metrics row (e.g. an Optuna pruner; an exception it raises ends training there)."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        if t.log_with:
            acc.init_trackers("nlp_decouple", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                      for k, v in flatten(cfg.to_dict()).items()})
        if acc.is_main_process:
            log.info("run directory %s; data %s; %d parameters; groups %s", self.run_dir, self.data.stats,
                     count_parameters(self.model), group_sizes(cfg))
        state = self._resume() or TrainState()
        if acc.is_main_process:  # rewritten from the history: a resumed run's file equals an uninterrupted one's
            (self.run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in state.history))
        try:
            with StopSignal() as stop:
                while (state.epoch <= t.epochs and not self._out_of_steps(state)
                       and not any_rank(state.out_of_patience(t.early_stopping_patience), acc)):
                    epoch_time = self._train_epoch(state, stop)
                    self._end_epoch(state, epoch_time)
                    if on_epoch is not None:
                        on_epoch(state.history[-1])
                    state.next_epoch()
                    self._checkpoint(state)
                    if any_rank(stop.requested is not None, self.accelerator):
                        raise stop_request(stop, state)
        finally:
            self.engine.close()
        if acc.is_main_process:
            self._save_weights("last", state.history[-1])
        results = build_results(state, cfg, device=acc.device, num_processes=acc.num_processes,
                                num_parameters=count_parameters(self.model), label_names=self.data.label_names,
                                data_stats=self.data.stats, probe_set=self.probe.stats(),
                                word_vector_coverage=self.word_vector_coverage, data_fingerprint=self.data_fingerprint)
        if acc.is_main_process:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
        for tracker in acc.trackers:  # not end_training(): the process group outlives the run (end_process_group)
            tracker.finish()
        return results

    def _out_of_steps(self, state: TrainState) -> bool:
        return self.cfg.train.max_steps is not None and state.step >= self.cfg.train.max_steps

    def _chunk(self, state: TrainState) -> int:
        """Batches for the engine's next run: up to the next checkpoint, max_steps or the engine's chunk."""
        t, n = self.cfg.train, self.engine.chunk
        if t.save_every:
            n = min(n, t.save_every - state.step % t.save_every)
        if t.max_steps is not None:
            n = min(n, t.max_steps - state.step)
        return n

    def _train_epoch(self, state: TrainState, stop: StopSignal) -> float:
        """Train the rest of the epoch; returns the seconds it took (checkpoints excluded)."""
        acc, t = self.accelerator, self.cfg.train
        self.model.train()
        self.loaders.shuffle.manual_seed(t.seed * 7919 + state.epoch)  # the epoch's order, also after a resume
        total = len(self.loaders.train)
        loader = acc.skip_first_batches(self.loaders.train, state.batches_done) if state.batches_done else self.loaders.train
        batches = iter(loader)
        bar = tqdm(desc=f"epoch {state.epoch}/{t.epochs}", initial=state.batches_done, total=total, leave=False,
                   disable=not (acc.is_local_main_process and t.progress))
        start, spent = time.perf_counter(), 0.0
        while True:
            chunk_losses = []  # each step's stage losses, left on the device until the chunk ends
            for batch, stage_losses in self.engine.run(batches, self._chunk(state), state.step):
                state.count_step(batch["labels"].shape[0] * self.replicas)
                chunk_losses.append(torch.as_tensor(stage_losses, dtype=torch.float64))
                bar.update(1)
            self._record_losses(state, chunk_losses, bar)
            # the engine is quiescent here: no thread touches weights until the next run
            if not chunk_losses or state.batches_done >= total or self._out_of_steps(state):
                break
            asked = any_rank(stop.requested is not None, acc)
            if asked or (t.save_every and state.step % t.save_every == 0):
                spent += time.perf_counter() - start
                state.train_time += time.perf_counter() - start
                self._checkpoint(state)
                start = time.perf_counter()
            if asked:
                raise stop_request(stop, state)
        bar.close()
        state.train_time += time.perf_counter() - start
        return spent + time.perf_counter() - start

    def _record_losses(self, state: TrainState, chunk_losses: list[torch.Tensor], bar: tqdm) -> None:
        """The chunk's stage losses, read on the host at once (no step waits for the device), then recorded step
        by step: tracker logs, and a non-finite streak stops the run at the step a per-step check would."""
        rows = torch.stack(chunk_losses).tolist() if chunk_losses else []
        for step, row in enumerate(rows, start=state.step - len(rows) + 1):
            bad = state.record_losses(row)
            if self.cfg.train.log_with and step % 10 == 0:
                self.accelerator.log({f"train/loss_stage{k}": v for k, v in enumerate(row)}, step=step)
            if bad:
                log.warning("step %d: non-finite loss in stage(s) %s; update skipped", step, bad)
            if bad and state.nonfinite_in_row >= self.cfg.train.max_nonfinite:
                raise NonFiniteLoss(
                    f"loss was non-finite in stage(s) {bad} for {state.nonfinite_in_row} steps in a row (step "
                    f"{step}); lower train.lr, set train.grad_clip=1.0 or use train.mixed_precision=no"
                    f" (checkpoints so far are in {self.run_dir / 'checkpoints'})")
        if rows:
            bar.set_postfix(loss=" ".join(f"{v:.3f}" for v in rows[-1]))

    def _end_epoch(self, state: TrainState, epoch_time: float) -> None:
        acc, cfg = self.accelerator, self.cfg
        self.engine.gather_weights()
        scores, outs = evaluate(self.model, self.loaders.evals, self.loaders.probe, acc, cfg.eval.every_group,
                                cfg.eval.probe_max_iter, cfg.train.seed)
        losses = np.nanmean(np.asarray(state.epoch_losses, dtype=float), axis=0).tolist() if state.epoch_losses else []
        row = {"epoch": state.epoch, "step": state.step, "train_loss": losses, "epoch_time_s": epoch_time,
               "validation": scores["validation"], "test": scores.get("test"), **({"groups": scores["groups"]}
                                                                                 if "groups" in scores else {})}
        state.history.append(row)
        improved = state.best is None or row["validation"]["accuracy"] > state.best["validation"]["accuracy"]
        if improved:
            state.best = row
            test = outs.get("test")
            state.best_report = detailed_report(test.labels, test.final_logits, self.data.label_names) if test else {}
        if acc.is_main_process:
            with (self.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            test_text = f", test acc {row['test']['accuracy']:.4f}" if row["test"] else ""
            log.info("epoch %d: val acc %.4f%s (%.1fs)%s", state.epoch, row["validation"]["accuracy"], test_text,
                     row["epoch_time_s"], "  * best" if improved else "")
            if improved:
                self._save_weights("best", row, outs.get("test"))
        if cfg.train.log_with:
            acc.log({f"{split}/accuracy": row[split]["accuracy"] for split in ("validation", "test") if row[split]},
                    step=state.step)

    def _checkpoint(self, state: TrainState) -> None:
        saved = {**state.to_dict(), "identity": checkpoint_identity(self)}
        path = save_checkpoint(self.accelerator, self.run_dir / "checkpoints", state.step, saved,
                               self.cfg.train.keep_checkpoints)
        log.info("checkpoint %s", path)

    def _resume(self) -> TrainState | None:
        saved = resume_point(self.accelerator, self.run_dir / "checkpoints", self.cfg.train.resume,
                             checkpoint_identity(self), self.cfg.train.resume_other_versions)
        return None if saved is None else TrainState.from_dict(saved)

    def _save_weights(self, tag: str, row: dict, test=None) -> None:
        """``RUN_DIR/tag``: the model of ``row``'s epoch (save_model); with ``test`` outputs, also that epoch's
        per-example test predictions (paired comparisons in reports)."""
        save_model(self.run_dir / tag, tag, self.model, self.cfg, self.tokenizer, self.data, row)
        if test is not None:
            write_predictions(self.run_dir / "test_predictions.json", test, row["epoch"])
