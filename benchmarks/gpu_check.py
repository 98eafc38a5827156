"""The GPU check: one command, a table of checks, exit status 1 when a check failed (run by gpu_check.sh).

    bash benchmarks/gpu_check.sh             # on a CUDA machine (sized for about 10 minutes on one GPU)
    bash benchmarks/gpu_check.sh --quick     # small sizes: the wiring only

Rows (check, status ok | FAIL | skip, detail):

- ``thread_pipeline``: SCPL trained by the thread pipeline (stages over the visible GPUs; one GPU: two
  worker streams on it) ends with the weights of sequential training (Transformer, deterministic kernels);
- ``process_pipeline``: ``torchrun --nproc_per_node 2`` with ``train.pipeline=processes`` over NCCL ends
  with the weights of the sequential run (needs 2 GPUs: NCCL refuses two ranks on one device);
- ``bf16_<method>``: every method trains under ``train.mixed_precision=bf16`` with every loss finite;
- ``throughput_<mode>``: samples/s and peak memory of bp, sequential SCPL and pipelined SCPL at the SCPL
  paper's AG News size (d=300, batch 1024, max_length 60; random tokens), from pipeline_throughput.py;
- ``minilm_<mode>``, ``transformer12_<mode>`` and their ``_goal`` rows: one GPU, bp against sequential
  SCPL and SCPL's thread pipeline with every stage on its own CUDA stream of that GPU (see :func:`one_gpu`);
- ``agnews_<method>``: one epoch of ag_news_7600 (../shared) for bp and scpl: test accuracy and time.

Without CUDA every row is ``skip`` (with the reason) and the exit status is 0: CI runs it that way.
``--cpu`` runs every check on the CPU instead (gloo, ``--quick`` sizes): the code paths, not the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (train.deterministic)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("NLP_DECOUPLE_SHARED", REPO.parent / "shared"))
TINY = ["train.progress=false", "model.hidden_size=64", "model.num_heads=4", "model.ffn_size=128", "model.num_layers=2",
        "model.dropout=0", "data.synthetic_train_size=2000", "data.synthetic_test_size=200", "train.batch_size=64",
        "train.epochs=1", "eval.every_group=false"]


def fit(out: Path, name: str, *extra: str) -> tuple[dict, dict]:
    """A training run in this process: (results, weights on the CPU)."""
    from nlp_decouple.config import load_config
    from nlp_decouple.trainer import Trainer

    trainer = Trainer(load_config("recipes/quickstart.yaml", [*TINY, f"output_dir={out}", f"run_name={name}", *extra]))
    results = trainer.fit()
    return results, {k: v.detach().float().cpu() for k, v in trainer.model.state_dict().items()}


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0 for k in a)


CPU = False  # --cpu: every check on the CPU


def thread_pipeline(out: Path, quick: bool) -> tuple[str, str]:
    import torch

    gpus = torch.cuda.device_count()
    devices = "[cpu,cpu]" if CPU else "[cuda:0,cuda:1]" if gpus > 1 else "[cuda:0,cuda:0]"
    common = ["method.name=scpl", "model.encoder=transformer", "train.deterministic=true",
              f"train.max_steps={10 if quick else 30}"]
    _, seq = fit(out, "seq", *common)
    _, pipe = fit(out, "pipe", *common, "train.pipeline=true", f"train.devices={devices}")
    diff = max_difference(seq, pipe)
    return ("ok" if diff == 0 else "FAIL"), f"devices {devices}: max |weight difference| {diff:.3g}"


def process_pipeline(out: Path, quick: bool) -> tuple[str, str]:
    import torch
    from safetensors.torch import load_file

    if torch.cuda.device_count() < 2 and not CPU:
        return "skip", "needs 2 GPUs (NCCL does not run two ranks on one device)"
    common = ["method.name=scpl", "model.encoder=lstm", f"train.max_steps={10 if quick else 30}", *TINY,
              f"output_dir={out}", f"train.cpu={str(CPU).lower()}"]
    from nlp_decouple.sweeps import train_command

    runs = {"seq": train_command("recipes/quickstart.yaml", [*common, "run_name=seq"]),
            "pp": train_command("recipes/quickstart.yaml", [*common, "train.pipeline=processes", "run_name=pp"],
                                launcher="torchrun --standalone --nproc_per_node 2")}
    for name, cmd in runs.items():
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return "FAIL", f"{name} run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:150]}"
    seq, pp = (load_file(str(out / name / "last" / "model.safetensors")) for name in ("seq", "pp"))
    diff = max_difference(seq, pp)
    return ("ok" if diff < 1e-5 else "FAIL"), (f"2 ranks over {'gloo' if CPU else 'NCCL'} vs sequential: max |weight "
                                               f"difference| {diff:.3g}")


def bf16(out: Path, quick: bool, method: str) -> tuple[str, str]:
    results, _ = fit(out, f"bf16-{method}", f"method.name={method}", "train.mixed_precision=bf16",
                     f"train.max_steps={10 if quick else 40}")
    ok = results["nonfinite_steps"] == 0
    return ("ok" if ok else "FAIL"), (f"{results['steps']} steps, {results['nonfinite_steps']} non-finite, "
                                      f"test accuracy {results['test_accuracy']:.3f}")


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pipeline_throughput", REPO / "benchmarks" / "pipeline_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _rows(report: Path, prefix: str) -> tuple[list[tuple[str, str, str]], dict]:
    rows, by_mode = [], {}
    for r in json.loads(report.read_text())["configs"][0]["results"]:
        peak = "" if r["peak_memory_mb"] is None else f", peak {r['peak_memory_mb']:.0f} MiB"
        rounds = ", ".join(f"{x:.2f}" for x in r["ratio_to_bp_rounds"])
        rows.append((f"{prefix}_{r['mode']}", "ok",
                     f"{r['samples_per_s']:.0f} samples/s ({r['ratio_to_bp']:.2f}x bp; rounds {rounds}){peak}"))
        by_mode[r["mode"]] = r
    return rows, by_mode


def throughput(out: Path, quick: bool) -> list[tuple[str, str, str]]:
    report = out / "throughput.json"
    size = ["--batch-size", "1024", "--hidden", "300", "--batches", "20", "--repeats", "3", "--warmup", "2"]
    if quick:
        size = ["--batch-size", "32" if CPU else "256", "--hidden", "64" if CPU else "300", "--batches", "3",
                "--repeats", "1", "--warmup", "1"]
    _bench().main(["--devices", "cpu" if CPU else "auto", "--seq-len", "60", "--layers", "2", *size,
                   "--modes", "bp,scpl_sequential,scpl_pipeline", "--out", str(report)])
    return _rows(report, "throughput")[0]


def one_gpu(out: Path, quick: bool, model: str) -> list[tuple[str, str, str]]:
    """One GPU, the trainer's engines at a size that fills it: ``minilm`` (the pretrained MiniLM, 6 layers in
    2 groups, batch 128, 128 tokens) and ``transformer12`` (12 layers, d = 768, 12 heads, 4 groups of 3,
    batch 64, 256 tokens). Sequential SCPL against BP (goal for the MiniLM: a step at most 1.1x BP's,
    i.e. samples/s >= 0.91x) and SCPL's thread pipeline with each stage on its own CUDA stream of the same
    GPU (goal for the 12-layer model: >= 1.0x BP). torch-pipelined BP needs a rank per GPU (NCCL): not here."""
    report = out / f"{model}.json"
    if model == "minilm":
        groups, goal_mode, goal = 2, "scpl_sequential", 1 / 1.1
        shape = ["--encoder", "minilm", "--layers", "6"]
        batch, tokens = (8, 16) if quick else (128, 128)
    else:
        groups, goal_mode, goal = 4, "scpl_pipeline", 1.0
        hidden, heads = (64, 4) if quick else (768, 12)
        shape = ["--encoder", "transformer", "--layers", "12", "--hidden", str(hidden), "--heads", str(heads)]
        batch, tokens = (8, 16) if quick else (64, 256)
    devices = ",".join(["cpu" if CPU else "cuda:0"] * groups)  # a stream per stage on the one GPU
    batches, repeats, warmup = (3, 1, 1) if quick else (20, 3, 3)
    _bench().main(["--devices", devices, *shape, "--groups", str(groups), "--batch-size", str(batch),
                   "--seq-len", str(tokens), "--batches", str(batches), "--repeats", str(repeats),
                   "--warmup", str(warmup), "--modes", "bp,scpl_sequential,scpl_pipeline", "--out", str(report)])
    rows, by_mode = _rows(report, model)
    ratio = by_mode[goal_mode]["ratio_to_bp"]
    status = "ok" if quick or CPU or ratio >= goal else "FAIL"
    rows.append((f"{model}_goal", status, f"{goal_mode} {ratio:.2f}x bp, goal >= {goal:.2f}x"
                 + (" (not judged at --quick sizes)" if quick or CPU else "")))
    return rows


def agnews(out: Path, quick: bool, method: str) -> tuple[str, str]:
    data = SHARED / "datasets" / "ag_news_7600"
    if not data.is_dir():
        return "skip", f"{data} not found (set NLP_DECOUPLE_SHARED)"
    from nlp_decouple.config import load_config
    from nlp_decouple.trainer import Trainer

    extra = ["train.max_steps=3", "data.max_train_samples=1000", "data.max_eval_samples=200"] if quick else []
    cfg = load_config("recipes/agnews_lstm.yaml", [f"data.path={data}", f"method.name={method}", "train.epochs=1",
                                                   "eval.every_group=false", "train.progress=false", f"output_dir={out}",
                                                   f"run_name=ag-{method}", *extra, *(["train.cpu=true"] if CPU else [])])
    start = time.perf_counter()
    results = Trainer(cfg).fit()
    return "ok", (f"test accuracy {results['test_accuracy']:.4f}, {time.perf_counter() - start:.0f}s "
                  f"({results['train_samples_per_s']:.0f} samples/s training)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: check the wiring only")
    p.add_argument("--cpu", action="store_true", help="run every check on the CPU (implies --quick)")
    p.add_argument("--only", help="run this one check here and print its rows as JSON (used by the table run)")
    args = p.parse_args(argv)
    global CPU
    CPU = args.cpu
    args.quick = args.quick or args.cpu
    import torch

    from nlp_decouple.methods import METHODS

    checks = [("thread_pipeline", thread_pipeline), ("process_pipeline", process_pipeline)]
    checks += [(f"bf16_{m}", lambda out, quick, m=m: bf16(out, quick, m)) for m in METHODS]
    checks += [("throughput", throughput)]
    checks += [(f"one_gpu_{m}", lambda out, quick, m=m: one_gpu(out, quick, m)) for m in ("minilm", "transformer12")]
    checks += [(f"agnews_{m}", lambda out, quick, m=m: agnews(out, quick, m)) for m in ("bp", "scpl")]
    if args.only:  # one check in this (fresh) process: Accelerate's state is per process, set once
        check = dict(checks)[args.only]
        with tempfile.TemporaryDirectory() as tmp:
            got = check(Path(tmp), args.quick)
        print("ROWS " + json.dumps(got if isinstance(got, list) else [(args.only, *got)]))
        return 0
    rows: list[tuple[str, str, str]] = []
    cuda = torch.cuda.is_available() or CPU
    if torch.cuda.is_available():
        print(f"CUDA: {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}", flush=True)
    for name, _ in checks:
        if not cuda:
            rows.append((name, "skip", "no CUDA device"))
            continue
        start = time.perf_counter()
        cmd = [sys.executable, __file__, "--only", name, *(["--quick"] if args.quick else []), *(["--cpu"] if CPU else [])]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        took = time.perf_counter() - start
        found = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
        if proc.returncode != 0 or not found:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
            got = [(name, "FAIL", f"exit {proc.returncode}: {last}")]
        else:
            got = json.loads(found[-1][5:])
        for row in got:
            rows.append((row[0], row[1], f"{row[2]} [{took:.0f}s]"))
            print(f"{rows[-1][0]:28s} {rows[-1][1]:5s} {rows[-1][2]}", flush=True)
    print("\n| check | status | detail |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    return 1 if any(status == "FAIL" for _, status, _ in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
