"""The report's typed data: the finished runs it reads and the rows it writes (report.json is these rows
as JSON). Accuracies, F1 scores and their differences are in percentage points; a difference is always
the method minus the reference (BP of the same encoder), paired by seed."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .stats import PairedTest

SOURCE_FILE = "source_recipe.json"  # written by compare into each run: the recipe and its tune provenance
SCHEMA_VERSION = 2  # report.json: 2 added the paired t / TOST tests and renamed vs_bp.interval to bootstrap_ci95


@dataclass
class Run:
    path: Path
    results: dict
    history: list[dict]
    config: dict
    predictions: dict | None = None  # test_predictions.json: labels and predicted ids at the best epoch
    source: dict | None = None  # source_recipe.json (written by compare): the recipe and its tune provenance

    @property
    def key(self) -> tuple[str, str]:
        """(encoder, method); a pretrained encoder is named by its Hub id or folder (different models are
        different encoders)."""
        encoder = self.results["encoder"]
        if encoder == "pretrained" and self.setting("model.pretrained"):
            encoder = str(self.setting("model.pretrained"))
        return encoder, self.results["method"]

    def setting(self, dotted: str):
        section, name = dotted.split(".")
        return self.config.get(section, {}).get(name)

    def tuned_recipe(self) -> str | None:
        """The recipe this run came from when ``nlp-decouple tune`` wrote it for this run's method and the
        run kept every tuned value; None otherwise (any other recipe, a tuned value overridden, another
        method's recipe, or a run trained outside ``compare``)."""
        provenance = (self.source or {}).get("tune_provenance")
        if not provenance or provenance.get("study") != self.results["method"]:
            return None
        for key, value in provenance.get("params", {}).items():
            mine = self.setting(key)
            same = math.isclose(mine, value, rel_tol=1e-9) if isinstance(value, float) and isinstance(
                mine, (int, float)) else mine == value
            if not same:
                return None
        return self.source.get("recipe")


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)


@dataclass
class LayerAccuracy:
    """Mean test accuracy (%) of one layer group at each run's best epoch (0 = embedding); ``kind``: "exit"
    when it is the method's own classifier, "probe" when a linear probe on the group's pooled features."""
    group: int
    kind: str
    test_accuracy: float


@dataclass
class VsBP:
    """A method against BP of its encoder, paired by seed (the seeds both ran).

    ``test``: the paired t test, TOST and t intervals on ``test_accuracy_diff`` (None with fewer than 2
    paired seeds), its p-values Holm-adjusted across the report's comparisons; ``verdict`` comes from it.
    ``bootstrap_ci95``: the two-level paired bootstrap interval of the accuracy difference (descriptive;
    None when the runs' test predictions cannot be paired, ``note`` says why)."""
    reference: str
    seeds: list[int]
    test_accuracy_diff: list[float]
    test_macro_f1_diff: list[float]
    test_accuracy_diff_mean: float | None
    test_macro_f1_diff_mean: float | None
    test: PairedTest | None
    bootstrap_ci95: list[float] | None
    verdict: str
    note: str | None
    tuned: bool  # both sides' runs come from recipes `nlp-decouple tune` wrote for their method


@dataclass
class MethodRow:
    """One (encoder, method): means over its seeds (``*_std``: sample standard deviation; ``*_ci95``:
    Student t interval of the mean over seeds, None with one seed), cost means, and ``vs_bp`` (None for BP
    itself and where the report has no BP of this encoder)."""
    label: str
    encoder: str
    method: str
    seeds: list[int]
    runs: list[str]
    test_accuracy_mean: float
    test_accuracy_std: float
    test_macro_f1_mean: float
    test_macro_f1_std: float
    test_accuracy_ci95: list[float] | None
    test_macro_f1_ci95: list[float] | None
    last_epoch_accuracy_mean: float
    best_epochs: list[int]
    time_per_epoch_s: float
    train_samples_per_s: float
    peak_memory_mb: float
    peak_memory_kind: str
    num_parameters: int
    groups_test_accuracy: list[LayerAccuracy] | None
    tuned_recipe: str | None  # set when every run comes from the recipe `tune` wrote for this method
    vs_bp: VsBP | None = None
