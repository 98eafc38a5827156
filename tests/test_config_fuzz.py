"""Fuzz: any recipe text and override strings either validate or fail with a clean UserError."""
from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlp_decouple.config import Config, load_config
from nlp_decouple.errors import UserError


def _known_keys() -> list[str]:
    keys = []
    for name, field in Config.model_fields.items():
        section = field.annotation
        keys += [f"{name}.{key}" for key in section.model_fields] if hasattr(section, "model_fields") else [name]
    return keys


KEYS = _known_keys()
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=5), scalars, max_size=2))
value_text = st.one_of(st.text(max_size=16), values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))
key_text = st.one_of(st.sampled_from(KEYS), st.text(max_size=12),
                     st.sampled_from(KEYS).map(lambda k: k[:-1]), st.sampled_from(KEYS).map(lambda k: k + ".x"))


def _accepts_or_clean_error(recipe, overrides):
    try:
        assert isinstance(load_config(recipe, overrides), Config)
    except UserError as err:
        message = str(err)
        assert message and "\n" not in message.strip(), message


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(key_text, value_text), max_size=5))
def test_overrides_validate_or_fail_cleanly(pairs):
    _accepts_or_clean_error("recipes/quickstart.yaml", [f"{k}={v}" for k, v in pairs])


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200),
                 st.dictionaries(key_text, values, max_size=4).map(lambda d: yaml.safe_dump(d))))
def test_recipe_text_validates_or_fails_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("r") / "recipe.yaml"
    path.write_text(text)
    _accepts_or_clean_error(path, [])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(max_size=30))
def test_any_override_string_fails_cleanly_or_parses(raw):
    _accepts_or_clean_error(None, [raw])


def test_list_item_that_is_not_yaml_fails_cleanly():
    """Found by the fuzz test: an escape character inside a list override crashed the YAML reader."""
    _accepts_or_clean_error("recipes/quickstart.yaml", ["train.log_with=\x1b"])
    _accepts_or_clean_error("recipes/quickstart.yaml", ["data.text_fields=a,\x1b"])
