"""docs/architecture.md's reference loop cites the code it stands for: every cited name must exist."""
from __future__ import annotations

import importlib
import re

import pytest
from conftest import REPO


def cited_names() -> list[str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("## Reference loop", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    return sorted(set(re.findall(r"\bnlp_decouple(?:\.\w+)+", block)))


def resolve(name: str) -> object:
    """Import the longest module prefix of ``name``, then read the rest as attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the doc names something the code does not have
        return obj
    raise ModuleNotFoundError(name)


def test_the_reference_loop_cites_names_that_exist():
    names = cited_names()
    assert len(names) >= 8, names  # the block was found and cites the loop's pieces
    missing = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/architecture.md cites names the package lacks: {missing}"


def test_a_wrong_name_is_caught():
    with pytest.raises(AttributeError):
        resolve("nlp_decouple.trainer.Trainer._chunk")
    with pytest.raises(ModuleNotFoundError):
        resolve("nlp_decouple_gone.trainer")
