"""Every shipped recipe loads, validates, says how to run itself, and works with every method."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nlp_decouple.config import Config, group_sizes, load_config
from nlp_decouple.methods import METHODS

from conftest import REPO

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))  # recipes/paper/ too


def recipe_id(path: Path) -> str:
    return str(path.relative_to(REPO / "recipes").with_suffix(""))


def test_recipes_exist():
    assert RECIPES, "no recipes/*.yaml found"
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_loads_and_validates(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)
    raw = yaml.safe_load(recipe.read_text())
    own = raw.pop("per_method", {}).get(cfg.method.name, {})  # the recipe's own method's lines win
    # what the file says is what the config holds (no section silently dropped)
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                value = own.get(f"{section}.{key}", value)
                got = getattr(getattr(cfg, section), key)
                assert got == pytest.approx(value) if isinstance(value, float) else got == value, (section, key)
        else:
            assert getattr(cfg, section) == values
    assert sum(group_sizes(cfg)) == cfg.model.num_layers + 1


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_opens_with_how_to_run_it(recipe):
    lines = recipe.read_text().splitlines()
    assert lines and lines[0].startswith("#"), f"{recipe.name} must open with a comment line"
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    runs = [line for line in header if "nlp_decouple.train" in line]
    assert runs, f"{recipe.name}: the opening comment must show a `python -m nlp_decouple.train ...` command"
    assert any(f"{recipe.relative_to(REPO)}" in line for line in runs), \
        f"{recipe.name}: the command in the opening comment must name this recipe"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_with_every_method(recipe, method):
    cfg = load_config(recipe, [f"method.name={method}"])
    assert cfg.method.name == method
