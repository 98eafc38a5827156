"""Optional dependencies (pyproject's extras): the code that needs one imports it through ``require``, so
a missing one is a one-line error naming the extra to install."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import UserError

EXTRA_OF = {"optuna": "tune", "matplotlib": "report", "scipy": "report", "tensorboard": "tensorboard"}


def require(module: str, needed_by: str) -> ModuleType:
    """Import ``module`` (e.g. ``"optuna"``), or fail naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise UserError(f'{needed_by} needs {top}, which is not installed: pip install "nlp_decouple[{EXTRA_OF[top]}]"'
                        ) from None


def require_report(needed_by: str) -> None:
    """The report's plotting and statistics libraries are installed."""
    for module in ("matplotlib", "scipy"):
        require(module, needed_by)


def require_trackers(log_with: list[str]) -> None:
    """The experiment trackers of ``train.log_with`` that an extra provides are installed (Accelerate's
    TensorBoard tracker also takes tensorboardX)."""
    if "tensorboard" in log_with and importlib.util.find_spec("tensorboardX") is None:
        require("tensorboard", "train.log_with=tensorboard")
