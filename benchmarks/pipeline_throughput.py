"""Training throughput (samples/s): sequential per-group SCPL vs pipelined SCPL vs BP.

An LSTM, a Transformer or the pretrained MiniLM (``--encoder``) cut into layer groups (default: embedding + 2 blocks in 2 groups),
random token ids, AdamW (multi-tensor, as the trainer). ``--layers`` and ``--batch-size`` take several
values: every combination is measured, each with its own BP baseline, and the ratios to BP are computed
within a combination. Modes, each on a fresh copy of the same initial model:

- ``bp``: one stage, one backward through everything (train.method=bp);
- ``bp_1thread`` (not in the default ``--modes``): the same on one intra-op thread, to show how much of
  the machine BP already uses (the pipeline's ceiling over BP is stages x (1-thread / all-thread BP));
- ``scpl_sequential``: the trainer's per-group loop, one stage after the other in one thread;
- ``scpl_1thread`` (not in the default ``--modes``): the same on one intra-op thread; ``stages x`` its
  speed is what the pipeline's one-thread stages would reach with no overhead (``pipeline_efficiency``);
- ``scpl_pipeline``: :class:`nlp_decouple.engines.ThreadedPipeline`, one thread per stage on
  ``--devices`` (default ``cpu``: every stage on the CPU, the CPU threads split between them;
  ``auto``: the visible GPUs);
- ``scpl_processes`` (not in the default ``--modes``): :class:`nlp_decouple.engines.ProcessPipeline`,
  ``--ranks`` worker processes (gloo on localhost, spawned once per configuration and not timed), each
  with ``--stage-threads`` intra-op threads (default 1) and a balanced block of stages; the time is taken
  on rank 0 between two barriers around the batches, as ``train.pipeline=processes`` runs them;
- ``bp_torch_gpipe``, ``bp_torch_1f1b`` (not in the default ``--modes``): BP with
  :class:`nlp_decouple.engines.TorchPipeline` (``torch.distributed.pipelining``'s ``ScheduleGPipe`` /
  ``Schedule1F1B``, ``--micro-batches`` per batch, one AdamW step per batch) on the same ``--ranks``
  processes and threads, its layer groups in the same balanced blocks as ``scpl_processes``' stages.

Side by side, with the machine's ceiling measured in the same run:
``--modes bp,bp_1thread,bp_torch_gpipe,bp_torch_1f1b,scpl_sequential,scpl_pipeline,scpl_processes``
(docs/benchmarks.md, "Wall-clock side by side"; the thread GPipe BP these tables once had was removed
after losing to both torch schedules and to plain BP there).

Stages should cost about the same: the embedding block is nearly free, so an even number of encoder
layers in 2 groups (``--layers 4 8``: 5 and 9 blocks, groups of 3+2 and 5+4 blocks) gives 2 equal
stages, while an odd one leaves one stage a layer short (``--layers 3``: 2+2 blocks, 1 layer vs 2).

The sequential modes use the same placement as the pipeline (stages moved, carries moved by hooks);
``bp`` runs on the first device. Every mode runs ``--warmup`` untimed batches first. Results go to a
JSON file (``--out``). A smoke run:

    python benchmarks/pipeline_throughput.py --batches 4 --warmup 1 --batch-size 32 --hidden 64 \
        --out benchmarks/out/pipeline_smoke.json

A real CPU measurement (give it the machine): ``--batches 50 --batch-size 128 --hidden 300 --seq-len 60``;
on two GPUs: ``--devices auto --batch-size 1024 --hidden 300 --seq-len 400 --batches 100``.

Compare like with like on the CPU: the sequential modes use ``--threads`` intra-op threads in one
thread; the pipeline splits the same number over its stages (``--stage-threads`` to override). On a
machine shared with other jobs, OpenMP teams of more than one thread can slow down badly (threads
spin at barriers while a team member is descheduled): use ``--threads 1`` there, or measure on an idle
machine.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nlp_decouple.config import group_sizes, load_config  # noqa: E402
from nlp_decouple.classifier import StagedClassifier  # noqa: E402
from nlp_decouple.engines import (ProcessPipeline, ThreadedPipeline, TorchPipeline,  # noqa: E402
                                  assign_devices, place_stages, thread_budget)
from nlp_decouple.engines.processes import stage_owners  # noqa: E402


def make_batches(n: int, batch_size: int, seq_len: int, vocab: int, classes: int, seed: int, pin: bool):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (batch_size, seq_len), generator=g)
        lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (batch_size,), generator=g)
        mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()
        batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask,
                 "labels": torch.randint(0, classes, (batch_size,), generator=g)}
        batches.append({k: v.pin_memory() for k, v in batch.items()} if pin else batch)
    return batches


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def build(args, method: str, layers: int) -> StagedClassifier:
    overrides = [f"model.num_layers={layers}", f"model.groups={args.groups}", "model.dropout=0", f"method.name={method}"]
    if args.encoder == "minilm":  # the pretrained model from the Hub (cache), its first ``layers`` layers
        overrides += ["model.encoder=pretrained", f"model.pretrained={MINILM}",
                      "method.projection=mlp_bn"]  # as recipes/agnews_minilm.yaml
    else:
        overrides += [f"model.encoder={args.encoder}", f"model.hidden_size={args.hidden}", f"model.num_heads={args.heads}",
                      f"model.ffn_size={2 * args.hidden}"]
    cfg = load_config(None, overrides)
    torch.manual_seed(args.seed)
    model = StagedClassifier.from_config(cfg, args.vocab, 0, args.classes, args.seq_len)
    model.group_sizes = group_sizes(cfg)
    return model


def updater(model: StagedClassifier, lr: float):
    opts = [torch.optim.AdamW(stage.parameters(), lr=lr, foreach=True) for stage in model.stages]  # as the trainer

    def backward_and_step(k: int, loss: torch.Tensor) -> None:
        loss.backward()
        opts[k].step()
        opts[k].zero_grad(set_to_none=True)
    return backward_and_step


def sync(devices) -> None:
    for d in set(devices):
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def run_sequential(model: StagedClassifier, devices, batches, lr: float) -> list[list[float]]:
    handles = place_stages(list(model.stages), devices)
    backward_and_step, rows = updater(model, lr), []
    for batch in batches:
        row = []
        for k, out in enumerate(model.iter_stages(batch["input_ids"], batch["attention_mask"], batch["labels"])):
            row.append(float(out.loss.detach()))
            backward_and_step(k, out.loss)
        rows.append(row)
    sync(devices)
    for h in handles:
        h.remove()
    return rows


def run_pipeline(model: StagedClassifier, devices, batches, lr: float, queue_size: int,
                 threads: int | None) -> list[list[float]]:
    with ThreadedPipeline(list(model.stages), devices, updater(model, lr), decoupled=True,
                        queue_size=queue_size, threads_per_stage=threads) as runner:
        rows = [stage_losses for _, stage_losses in runner.run(batches)]
    sync(devices)
    return rows


TORCH_MODES = {"bp_torch_gpipe": "torch_gpipe", "bp_torch_1f1b": "torch_1f1b"}  # mode -> train.pipeline


def _rank_engine(args, layers: int, mode: str, world: int):
    """(model, engine, fresh_optimizers) of one rank of ``scpl_processes`` or a ``bp_torch_*`` mode."""
    if mode == "scpl_processes":
        model = build(args, "scpl", layers)
        engine = ProcessPipeline(model.stages, stage_owners(len(model.stages), world), torch.device("cpu"), None,
                                 lambda step, k: None, queue_size=args.queue_size)

        def fresh() -> None:
            engine.backward_and_step = updater(model, args.lr)
        return model, engine, fresh
    model = build(args, "bp", layers)
    stage, opt = model.stages[0], [None]

    def step(finite: bool) -> None:
        if finite:
            opt[0].step()
        opt[0].zero_grad(set_to_none=True)

    def fresh() -> None:
        opt[0] = torch.optim.AdamW(model.parameters(), lr=args.lr, foreach=True)  # as the trainer
    wire = (math.ceil(max(args.batch_size) / args.micro_batches), args.seq_len)
    engine = TorchPipeline(stage, stage_owners(len(stage.groups), world), TORCH_MODES[mode], args.micro_batches,
                           wire, torch.device("cpu"), step, lambda step: None)
    return model, engine, fresh


def _rank_main(rank: int, world: int, port: int, args, layers: int, mode: str, conn) -> None:
    """One rank of a process mode: holds the model, trains its own stages on what the parent sends."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(args.stage_threads or 1)
    model, engine, fresh = _rank_engine(args, layers, mode, world)
    while True:
        command, payload = conn.recv()
        if command == "stop":
            break
        if command == "state":  # a fresh copy of the initial model, as every other mode gets
            model.load_state_dict(payload)
            continue
        fresh()  # fresh optimizers per call, as run_sequential
        dist.barrier()
        start = time.perf_counter()
        rows = [stage_losses for _, stage_losses in engine.run(iter(payload))]
        dist.barrier()
        conn.send((rows, time.perf_counter() - start))
    dist.destroy_process_group()


class RankPool:
    """``--ranks`` processes running :func:`_rank_main` for ``mode``; called like the other modes' functions, it
    returns the rows and the seconds rank 0 measured (spawning and pickling the batches are not timed)."""

    def __init__(self, args, layers: int, mode: str):
        self.args, self.layers, self.mode, self.procs, self.conns, self.held = args, layers, mode, [], [], None

    def __call__(self, model, batches):
        if not self.procs:
            import socket
            import torch.multiprocessing as mp

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            ctx = mp.get_context("spawn")
            here = str(Path(__file__).resolve().parent)
            if here not in sys.path:  # a spawned child imports this script by name (loaded as a module in tests)
                sys.path.insert(0, here)
            target = importlib.import_module(__name__)._rank_main  # the function pickle finds under that name
            for rank in range(self.args.ranks):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=target, daemon=True,
                                   args=(rank, self.args.ranks, port, self.args, self.layers, self.mode, theirs))
                proc.start()
                self.procs.append(proc)
                self.conns.append(mine)
        if model is not self.held:
            for conn in self.conns:
                conn.send(("state", model.state_dict()))
            self.held = model
        for conn in self.conns:
            conn.send(("run", batches))
        answers = []
        for conn in self.conns:
            while not conn.poll(1.0):
                if not all(proc.is_alive() for proc in self.procs):
                    raise RuntimeError(f"a {self.mode} rank died: see its traceback above")
            answers.append(conn.recv())
        return answers[0]

    def close(self) -> None:
        for conn in self.conns:
            conn.send(("stop", None))
        for proc in self.procs:
            proc.join(60)
        self.procs, self.conns = [], []


def _cuda_peak_mb(reset: bool = False) -> float | None:
    """Peak CUDA memory allocated since the last reset, summed over the visible GPUs (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    devices = range(torch.cuda.device_count())
    if reset:
        for i in devices:
            torch.cuda.reset_peak_memory_stats(i)
        return None
    return sum(torch.cuda.max_memory_allocated(i) for i in devices) / 2**20


def measure(name: str, fn, model, warmup_batches, batches, samples: int) -> dict:
    _cuda_peak_mb(reset=True)
    fn(model, warmup_batches)
    start = time.perf_counter()
    rows = fn(model, batches)
    seconds = time.perf_counter() - start
    if isinstance(rows, tuple):  # the runner timed itself (scpl_processes)
        rows, seconds = rows
    last = rows[-1] if rows else []
    result = {"mode": name, "seconds": seconds, "batches": len(batches), "samples_per_s": samples / seconds,
              "last_losses": [v if math.isfinite(v) else None for v in last], "peak_memory_mb": _cuda_peak_mb()}
    print(f"{name:16s} {result['samples_per_s']:10.1f} samples/s  ({seconds:.2f}s for {len(batches)} batches)",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "pipeline_throughput.json")
    p.add_argument("--devices", default="cpu", help="cpu, auto, or a comma-separated list, one per stage")
    p.add_argument("--modes", default="bp,scpl_sequential,scpl_pipeline")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="rounds over all modes; medians are reported")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--encoder", choices=["lstm", "transformer", "minilm"], default="lstm",
                   help="minilm: the pretrained all-MiniLM-L6-v2 from the Hub cache (--hidden, --heads ignored)")
    p.add_argument("--heads", type=int, default=4, help="Transformer attention heads")
    p.add_argument("--batch-size", type=int, nargs="+", default=[64])
    p.add_argument("--seq-len", type=int, default=60)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, nargs="+", default=[2], help="encoder blocks after the embedding block")
    p.add_argument("--groups", type=int, default=2, help="layer groups (SCPL stages)")
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--queue-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the caller (default: torch's)")
    p.add_argument("--stage-threads", type=int, default=None,
                   help="torch threads per pipeline stage (default: the caller's threads split over the CPU stages)")
    p.add_argument("--ranks", type=int, default=2, help="scpl_processes, bp_torch_*: processes of the pipeline")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = args.devices if args.devices in ("auto", "cpu") or "," not in args.devices else args.devices.split(",")
    devices = assign_devices(spec, args.groups)
    configs = []
    for layers in args.layers:
        for batch_size in args.batch_size:
            print(f"-- {args.encoder}: {layers + 1} blocks in {args.groups} groups, batch {batch_size}", flush=True)
            config = measure_config(args, p, devices, layers, batch_size)
            configs.append(config)
            print("   median: " + ", ".join(f"{r['mode']} {r['samples_per_s']:.1f}" + (
                f" ({r['ratio_to_bp']:.2f}x bp)" if r["ratio_to_bp"] is not None else "") for r in config["results"]),
                  flush=True)
    report = {
        "benchmark": "pipeline_throughput",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "devices": [str(d) for d in devices],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "configs": configs,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "machine": platform.platform(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


def mode_runner(args, p, devices, mode: str, layers: int):
    """(model, fn(model, batches)) for one mode; fn trains the model on the batches."""
    if mode in ("bp", "bp_1thread"):
        return build(args, "bp", layers), lambda m, b: run_sequential(m, devices[:1], b, args.lr)
    if mode in ("scpl_sequential", "scpl_1thread"):
        return build(args, "scpl", layers), lambda m, b: run_sequential(m, devices, b, args.lr)
    if mode == "scpl_pipeline":
        return build(args, "scpl", layers), lambda m, b: run_pipeline(m, devices, b, args.lr, args.queue_size,
                                                                      args.stage_threads)
    if mode == "scpl_processes":
        return build(args, "scpl", layers), RankPool(args, layers, mode)
    if mode in TORCH_MODES:
        return build(args, "bp", layers), RankPool(args, layers, mode)
    p.error(f"unknown mode {mode!r}")


def measure_config(args, p, devices, layers: int, batch_size: int) -> dict:
    """Every mode at one depth and batch size, on the same batches and initial weights, ``--repeats``
    rounds (the order of the modes rotates each round, so no mode always runs first or last). Each
    mode reports the median samples/s over rounds; ``ratio_to_bp`` is the median of the per-round
    ratios (each against the BP of the same round, measured minutes apart at most)."""
    pin = any(d.type == "cuda" for d in devices)
    batches = make_batches(args.warmup + args.batches, batch_size, args.seq_len, args.vocab, args.classes,
                           args.seed + 1, pin)
    warm, timed = batches[: args.warmup], batches[args.warmup:]
    samples = args.batches * batch_size
    threads = torch.get_num_threads()
    modes = args.modes.split(",")
    runners = {mode: mode_runner(args, p, devices, mode, layers) for mode in modes}
    rounds: dict[str, list[dict]] = {mode: [] for mode in modes}
    for r in range(args.repeats):
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
            model, fn = runners[mode]
            torch.set_num_threads(1 if mode.endswith("_1thread") else threads)
            rounds[mode].append(measure(mode, fn, copy.deepcopy(model), warm, timed, samples))
            torch.set_num_threads(threads)
    results = []
    for _, fn in runners.values():
        if isinstance(fn, RankPool):
            fn.close()
    for mode in modes:
        speeds = [m["samples_per_s"] for m in rounds[mode]]
        result = {"mode": mode, "samples_per_s": statistics.median(speeds), "samples_per_s_rounds": speeds,
                  "batches": args.batches, "last_losses": rounds[mode][-1]["last_losses"],
                  "peak_memory_mb": rounds[mode][-1]["peak_memory_mb"]}
        if "bp" in rounds:
            ratios = [m["samples_per_s"] / b["samples_per_s"] for m, b in zip(rounds[mode], rounds["bp"])]
            result["ratio_to_bp"], result["ratio_to_bp_rounds"] = statistics.median(ratios), ratios
        else:
            result["ratio_to_bp"] = None
        if mode == "scpl_pipeline":
            result["threads_per_stage"] = thread_budget(args.stage_threads, devices)
        elif mode == "scpl_processes" or mode in TORCH_MODES:
            result["processes"], result["threads_per_process"] = args.ranks, args.stage_threads or 1
        else:
            result["threads"] = 1 if mode.endswith("_1thread") else threads
        results.append(result)
    by_mode = {r["mode"]: r["samples_per_s"] for r in results}
    config = {"layers": layers, "blocks": layers + 1, "batch_size": batch_size,
              "group_sizes": runners[modes[0]][0].group_sizes, "results": results}
    if "scpl_pipeline" in by_mode and "scpl_1thread" in by_mode:
        # the ideal of S one-thread stages: S x one-thread sequential SCPL (balanced stages, no overhead)
        config["pipeline_efficiency"] = by_mode["scpl_pipeline"] / (len(devices) * by_mode["scpl_1thread"])
    if "bp" in by_mode and "bp_1thread" in by_mode:
        # how much faster S one-thread stages could at best be than BP on all threads
        config["pipeline_ceiling_over_bp"] = len(devices) * by_mode["bp_1thread"] / by_mode["bp"]
    return config


if __name__ == "__main__":
    raise SystemExit(main())
