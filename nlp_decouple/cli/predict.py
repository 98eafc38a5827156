"""Classify texts with a saved model:

    nlp-decouple predict MODEL_DIR "first text" "second text"
    nlp-decouple predict RUN_DIR --file texts.txt --exit-threshold 0.9 --json

MODEL_DIR is a saved model (config.json + model.safetensors + tokenizer), or a run directory (its best
model). With ``--exit-threshold`` (methods with exits: early_exit, deinforeg, al) a text is answered by the
first group whose exit is at least that confident, and the output says which group answered.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError, cli_entry
from ..logs import setup_console


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nlp-decouple predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="saved model directory, or a run directory (uses RUN_DIR/best)")
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("--file", help="a text file, one text per line (blank lines are an error)")
    parser.add_argument("--exit-threshold", type=float, default=None,
                        help="adaptive early exit: answer at the first exit with top probability >= this (0-1]")
    parser.add_argument("--top-k", type=int, default=1, help="labels shown per text (default 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:1 (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    return parser.parse_intermixed_args(argv)  # options may follow the texts


def read_texts(args: argparse.Namespace) -> tuple[list[str], str]:
    if args.file and args.texts:
        raise UserError("give texts either on the command line or with --file, not both")
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"--file {args.file!r} not found")
        from ..inference import read_lines

        return read_lines(path), f"--file {args.file}"
    return list(args.texts), "command line"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.exit_threshold is not None and not 0 < args.exit_threshold <= 1:
        raise UserError(f"--exit-threshold must be in (0, 1], got {args.exit_threshold}")
    if args.top_k < 1 or args.batch_size < 1:
        raise UserError("--top-k and --batch-size must be at least 1")
    texts, source = read_texts(args)
    from ..inference import check_texts

    check_texts(texts, source)
    setup_console(verbose=False)
    from ..inference import load_for_inference, predict_texts

    model, tok = load_for_inference(args.model, args.device)
    probs, groups = predict_texts(model, tok, texts, args.batch_size, args.exit_threshold)
    names = model.config.id2label
    last_group = model.exit_groups[-1]
    for text, p, g in zip(texts, probs, groups):
        order = p.argsort()[::-1][: args.top_k]
        if args.json:
            print(json.dumps({"text": text, "label": names[int(order[0])], "probability": float(p[order[0]]),
                              "probabilities": {names[i]: float(p[i]) for i in range(len(p))},
                              "group": int(g), "exited_early": bool(g != last_group)}))
        else:
            labels = "  ".join(f"{names[int(i)]} {p[i]:.3f}" for i in order)
            where = f"  [group {int(g)}]" if args.exit_threshold is not None else ""
            snippet = text if len(text) <= 70 else text[:67] + "..."
            print(f"{labels}{where}\t{snippet}")
    if args.exit_threshold is not None:
        early = int((groups != last_group).sum())
        print(f"{early}/{len(texts)} texts answered before the last group (threshold {args.exit_threshold})",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
