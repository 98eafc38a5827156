"""Console set-up shared by the command-line entry points."""
from __future__ import annotations

import logging
import os


def setup_console(verbose: bool = True) -> None:
    """Our log lines (INFO), the libraries' only from WARNING; no progress bars from datasets' map/filter
    or transformers' "Writing model shards" (our own bar shows training). Safe to call more than once."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fork-safe tokenizers (DataLoader workers)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "transformers", "accelerate", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
