"""The main job's entry: ``accelerate launch -m nlp_decouple.train RECIPE [key=value ...]`` (the command itself
lives in :mod:`nlp_decouple.cli.train`)."""
import sys

from .cli.train import main

if __name__ == "__main__":
    sys.exit(main())
