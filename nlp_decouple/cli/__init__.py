"""The commands: ``nlp-decouple COMMAND ...`` (or ``python -m nlp_decouple COMMAND ...``).

Each command is a module here with a ``main(argv) -> exit code``; ``python -m nlp_decouple.train`` stays the
entry of the main job (``accelerate launch -m nlp_decouple.train RECIPE``).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "train one run from a YAML recipe and key=value overrides",
    "compare": "train methods x seeds on identical settings, then write a report",
    "tune": "tune each method's settings on validation accuracy with Optuna, the same trial budget for all",
    "evaluate": "re-score saved runs on other splits, datasets or a CSV of texts",
    "predict": "classify texts with a saved run",
    "report": "build a comparison report from finished run directories",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
        usage = "usage: nlp-decouple COMMAND [args...]  (nlp-decouple COMMAND --help for each)\n" + "\n".join(lines)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; use one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        print(usage)
        return 0
    module = importlib.import_module(f"{__name__}.{argv[0]}")
    return module.main(argv[1:])
