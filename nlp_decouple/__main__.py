"""``python -m nlp_decouple COMMAND ...``: the same commands as the ``nlp-decouple`` script."""
import sys

from .cli import main

sys.exit(main())
