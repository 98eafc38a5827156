"""Peak training memory against depth, BP vs SCPL (per-group backward frees each group's graph at once).

Every measurement runs in a fresh process. On CUDA: ``torch.cuda.max_memory_allocated``. On CPU: max RSS
of a process that trains, minus max RSS of a process that builds the same model and batch but does not
train (so weights, data and the interpreter cancel out; what is left is activations, gradients and
optimizer state).

    python benchmarks/memory_depth.py --out benchmarks/out/memory_depth.json --encoder lstm
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(encoder: str, method: str, depth: int, batch: int, length: int, hidden: int, steps: int,
            train: bool, device: str) -> float:
    """Runs inside the child process; returns MB."""
    import torch

    from nlp_decouple.config import load_config
    from nlp_decouple.classifier import StagedClassifier

    torch.manual_seed(0)
    cfg = load_config(None, [f"model.encoder={encoder}", f"model.num_layers={depth}", f"model.hidden_size={hidden}",
                             "model.num_heads=4", f"model.ffn_size={2 * hidden}", f"method.name={method}",
                             "model.dropout=0"])
    model = StagedClassifier.from_config(cfg, 8000, 0, 4, length).to(device)
    opts = [torch.optim.AdamW(s.parameters(), lr=1e-3) for s in model.stages]
    ids = torch.randint(1, 8000, (batch, length), device=device)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    labels = torch.arange(batch, device=device) % 4
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(steps if train else 0):
        for k, out in enumerate(model.iter_stages(ids, mask, labels)):
            out.loss.backward()  # bp: one stage; scpl: each stage's graph is freed before the next runs
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace, method: str, depth: int, train: bool) -> float:
    cmd = [sys.executable, __file__, "--child", method, str(depth), str(int(train)), "--encoder", args.encoder,
           "--batch", str(args.batch), "--length", str(args.length), "--hidden", str(args.hidden),
           "--steps", str(args.steps), "--device", args.device]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="lstm", choices=["lstm", "transformer"])
    parser.add_argument("--depths", nargs="+", type=int, default=[2, 4, 8, 12])
    parser.add_argument("--methods", nargs="+", default=["bp", "scpl"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/out/memory_depth.json")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "DEPTH", "TRAIN"))
    args = parser.parse_args()
    if args.child:
        method, depth, train = args.child
        print(measure(args.encoder, method, int(depth), args.batch, args.length, args.hidden, args.steps,
                      bool(int(train)), args.device))
        return
    rows = []
    for depth in args.depths:
        row = {"depth": depth}
        for method in args.methods:
            peak = child(args, method, depth, True)
            if args.device == "cpu":
                peak -= child(args, method, depth, False)
            row[f"{method}_mb"] = round(peak, 1)
        if "bp_mb" in row and "scpl_mb" in row:
            row["scpl_over_bp"] = round(row["scpl_mb"] / row["bp_mb"], 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {"command": " ".join(sys.argv), "encoder": args.encoder, "batch": args.batch, "length": args.length,
              "hidden": args.hidden, "device": args.device,
              "measure": "cuda max allocated" if args.device != "cpu" else "max RSS (train) - max RSS (no train)",
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
