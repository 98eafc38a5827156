"""Training engines behind one interface (:class:`~.base.Engine`): the trainer's loop drives whichever
the config asks for.

- :class:`~.sequential.Sequential`: every stage in turn in this process; data parallel over processes;
- :class:`~.threaded.ThreadedPipeline`: a decoupled method's stages as a pipeline of worker threads, one per
  device slot (``train.pipeline=true``);
- :class:`~.processes.ProcessPipeline`: a decoupled method's stages in blocks over the ranks of a launch
  (``train.pipeline=processes``);
- :class:`~.pipelining.TorchPipeline`: ``bp``'s groups in the same blocks over the same ranks, on
  ``torch.distributed.pipelining``'s GPipe or 1F1B schedule (``train.pipeline=torch_gpipe | torch_1f1b``).
"""
from __future__ import annotations

import logging
from typing import Callable

from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader

from ..classifier import StagedClassifier
from ..config import TORCH_PIPELINES, Config, over_processes
from ..errors import UserError
from ..optim import Optimization
from ..signals import agreed
from .base import Engine
from .pipelining import TorchPipeline, build_torch_pipeline
from .processes import PipelinePeerError, ProcessPipeline, build_process_pipeline
from .placement import assign_devices, assign_workers, place_stages
from .replicas import data_replicas
from .sequential import Sequential
from .threaded import ThreadedPipeline
from .workers import PipelineError, thread_budget

log = logging.getLogger("nlp_decouple")


def build_engine(cfg: Config, model: StagedClassifier, stages: list, optimization: Optimization,
                 accelerator: Accelerator, seed: Callable[[int], None], max_length: int) -> Engine:
    """``stages``: the model's stages as prepared for training (DDP twins under several processes);
    ``max_length``: the longest batch in tokens (bp's pipelines over processes size their messages by it)."""
    t = cfg.train
    if t.pipeline == "processes":
        return build_process_pipeline(cfg, model, optimization, accelerator)
    if t.pipeline in TORCH_PIPELINES:
        return build_torch_pipeline(cfg, model, optimization, accelerator, seed, max_length)
    if not t.pipeline:
        per_group = model.decoupled and cfg.method.backward == "per_group"
        return Sequential(model, stages, optimization, per_group, lambda flags: agreed(flags, accelerator), seed)
    if accelerator.num_processes != 1:
        raise UserError("train.pipeline=threads runs in one process (its stages are the parallelism): launch "
                        "without --num_processes, set train.pipeline=processes for a block of stages per process "
                        "(decoupled methods), or train.pipeline=false for data parallel")
    devices = assign_devices(t.devices, len(model.stages))  # a decoupled method (the config refuses bp here)
    place_stages(model.stages, devices)  # also moves a carry arriving at each stage (evaluation)

    def backward_and_step(k: int, loss) -> None:
        if k in optimization.optimizer_of:  # a frozen stage has nothing to step
            optimization.backward_and_step(optimization.optimizer_of[k], loss)

    workers = assign_workers(t.devices, len(model.stages))  # [cpu, cpu]: 2 threads, not 1 per stage
    log.info("pipeline: stages on %s, worker threads running stages %s", [str(d) for d in devices], workers)
    return ThreadedPipeline(model.stages, devices, backward_and_step, queue_size=t.queue_size,
                            threads_per_stage=t.threads_per_stage, move_stages=False,
                            context=accelerator.autocast, workers=workers)


def prepare_stages(cfg: Config, model: StagedClassifier, optimization: Optimization, loaders,
                   accelerator: Accelerator) -> list:
    """The stages as the engine trains them, with the optimizers and training loader prepared to match.
    Data parallel: a DDP wrapper per trainable stage (each backward syncs its own stage's gradients), the
    loader sharded over the processes. Process pipeline: the stages as they are (each rank trains its own
    block), every rank of a replica iterating the replica's shard of the loader (one replica: the whole
    loader), sharded as data parallel shards it over the replicas; optimizers and schedulers unwrapped
    (Accelerate would save rank 0's alone: the engine's PipelineState saves every rank's). bp's pipelines
    over processes alike, with one replica (their state: SplitState)."""
    if over_processes(cfg.train):
        model.to(accelerator.device)
        optimization.accelerator = accelerator
        dp = data_replicas(cfg.train, accelerator.num_processes)
        if dp > 1:  # replica d reads what process d of a dp-process data-parallel run reads (no rng broadcast:
            # every rank seeds the shuffle alike each epoch)
            loaders.train = prepare_data_loader(
                loaders.train, accelerator.device, num_processes=dp,
                process_index=accelerator.process_index // (accelerator.num_processes // dp),
                split_batches=accelerator.split_batches, put_on_device=True, rng_types=None,
                even_batches=accelerator.even_batches)
        return list(model.stages)
    stages = [accelerator.prepare(stage) if k in optimization.optimizer_of else stage.to(accelerator.device)
              for k, stage in enumerate(model.stages)]
    optimization.prepare(accelerator)
    loaders.train = accelerator.prepare(loaders.train)
    return stages


__all__ = ["Engine", "PipelineError", "PipelinePeerError", "ProcessPipeline", "Sequential", "ThreadedPipeline",
           "TorchPipeline",
           "assign_devices", "assign_workers", "build_engine", "data_replicas", "place_stages", "prepare_stages",
           "thread_budget"]
