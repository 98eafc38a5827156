"""``python -m nlp_decouple.tune RECIPE methods=... trials=N ...`` (the command lives in :mod:`nlp_decouple.cli.tune`)."""
import sys

from .cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
