"""Training cost of an encoder cut into layer groups, per method: step time and peak device memory of the
whole model trained on one device, and the peak memory of each stage trained alone on the device (what one
device of a pipeline holds: the stage's weights, gradients, AdamW state, activations and its input).

Each method runs in a fresh process (the allocator's peak starts clean). A step is the sequential engine's:
each stage's local loss is backpropagated and its optimizer stepped before the next stage runs (BP: one
stage). The batch is random token ids with every position real (the longest texts of the recipe), labels
cycling over the classes. A stage measured alone reads the carry that the stages below it produce on the
CPU (without gradients). Peak memory: ``torch.cuda.max_memory_allocated``, weights included; on the CPU only
the step time is measured. Not in the timed step: the trainer's per-stage gradient clipping and LR scheduler.

    python benchmarks/pretrained_cost.py recipes/agnews_minilm.yaml --device cuda --out benchmarks/out/minilm_cost.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("bp", "scpl", "early_exit", "deinforeg", "al")


def measure(recipe: str, overrides: list[str], device: str, steps: int, warmup: int, num_classes: int) -> dict:
    """Runs inside the child process."""
    import torch

    from nlp_decouple.classifier import StagedClassifier
    from nlp_decouple.config import load_config
    from nlp_decouple.models import Carry
    from nlp_decouple.optim import build_optimization
    from nlp_decouple.tokenization import build_tokenizer

    cuda = device.startswith("cuda")
    cfg = load_config(recipe, overrides)
    tok = build_tokenizer(cfg.tokenizer, None)
    length, batch = cfg.data.max_length, cfg.train.batch_size
    torch.manual_seed(0)
    model = StagedClassifier.from_config(cfg, len(tok), tok.pad_token_id, num_classes, length)
    model.train()  # dropout on, as in training
    ids = torch.randint(1000, len(tok), (batch, length))
    mask = torch.ones(batch, length, dtype=torch.bool)
    labels = torch.arange(batch) % num_classes

    def optimizers(stages):  # the trainer's: one AdamW per stage, body and heads at their own rates
        opt = build_optimization(list(stages), cfg.train, per_stage=True, updates_per_epoch=1)
        if len(opt.optimizers) != len(stages):
            raise SystemExit("a stage has nothing to train (a frozen embedding alone?): measure another cut")
        return opt.optimizers

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def update(outs, opts):  # outs may be iter_stages': each stage steps before the next one runs
        for out, opt in zip(outs, opts):
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    result: dict = {"stages": len(model.stages), "parameters": sum(p.numel() for p in model.parameters()),
                    "stage_parameters": [sum(p.numel() for p in s.parameters()) for s in model.stages]}
    # the whole model on the device: step time and peak memory
    model.to(device)
    opts = optimizers(model.stages)
    ids_d, mask_d, y = ids.to(device), mask.to(device), labels.to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        update(model.iter_stages(ids_d, mask_d, y), opts)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        update(model.iter_stages(ids_d, mask_d, y), opts)
    sync()
    took = (time.perf_counter() - start) / steps
    result.update(step_ms=1000 * took, samples_per_s=batch / took)
    if cuda:
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    del opts, ids_d, mask_d
    model.to("cpu")
    if len(model.stages) == 1:
        return result
    # each stage alone on the device, the stages below it on the CPU (on the CPU: the wiring, no memory)
    if cuda:
        torch.cuda.empty_cache()
    per_stage, resident, below = [], [], Carry(ids, mask)
    for stage in model.stages:
        resident.append(torch.cuda.memory_allocated() / 2**20 if cuda else None)
        stage.to(device)
        opt = optimizers([stage])
        carry = below.detach().to(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup + 2):
            update([stage(carry, y)], opt)
        sync()
        per_stage.append(torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
        with torch.no_grad():
            below = stage.cpu()(below, labels).carry  # the next stage's input
        del opt, carry
        if cuda:
            torch.cuda.empty_cache()
    result.update(stage_peak_memory_mb=per_stage, resident_before_stage_mb=resident)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides for every method")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        got = measure(args.recipe, [*args.overrides, f"method.name={args.child}"], args.device, args.steps,
                      args.warmup, args.num_classes)
        print("RESULT " + json.dumps(got))
        return 0
    import torch

    rows = {}
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, args.recipe, *args.overrides, "--child", method, "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--num-classes", str(args.num_classes)]
        proc = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True)
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            print(f"{method}: failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}", file=sys.stderr)
            return 1
        rows[method] = json.loads(found[-1][7:])
        print(method, json.dumps(rows[method]), flush=True)
    bp = rows.get("bp", {})
    for row in rows.values():  # side by side in one run: ratios against BP
        if "step_ms" in bp:
            row["step_time_vs_bp"] = row["step_ms"] / bp["step_ms"]
        if "peak_memory_mb" in bp and None not in row.get("stage_peak_memory_mb", [None]):
            row["largest_stage_memory_vs_bp"] = max(row["stage_peak_memory_mb"]) / bp["peak_memory_mb"]
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    report = {"recipe": args.recipe, "overrides": args.overrides, "device": device, "torch": torch.__version__,
              "steps": args.steps, "warmup": args.warmup, "methods": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
