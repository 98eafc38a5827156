"""Train one run: ``accelerate launch -m nlp_decouple.train RECIPE [key=value ...]`` (or ``nlp-decouple train``)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import load_config
from ..errors import cli_entry
from ..logs import setup_console


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="accelerate launch -m nlp_decouple.train",
        description="Train a text classifier with BP or a decoupled method (scpl, early_exit, deinforeg, al).",
        epilog="example: accelerate launch -m nlp_decouple.train recipes/quickstart.yaml method.name=scpl train.epochs=2",
    )
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/agnews_transformer.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=5e-4 model.groups=2")
    return parser.parse_args(argv)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.recipe, args.overrides)
    setup_console()
    from ..trainer import Trainer, end_process_group  # heavy imports only after the config is known to be good

    results = Trainer(cfg).fit()
    end_process_group()
    summary = {k: results[k] for k in ("best_epoch", "test_accuracy", "test_macro_f1", "last_epoch_test_accuracy",
                                       "time_per_epoch_s", "train_samples_per_s", "peak_memory_mb")}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(cfg.run_dir()), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
