"""The documentation's generated parts stay in step with the code."""

import json
import sys
from pathlib import Path

import jsonschema
import pytest

from fl_ee.results.schema import Summary, json_schema_text

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "docs" / "reference" / "summary.schema.json"


def test_the_shipped_json_schema_is_the_models_schema():
    assert SCHEMA.read_text() == json_schema_text(), (
        "stale; rewrite it: python -m fl_ee.results.schema > docs/reference/summary.schema.json")


def test_the_schema_refuses_a_summary_that_drifted():
    schema = json.loads(SCHEMA.read_text())
    with pytest.raises(jsonschema.ValidationError, match="required property"):
        jsonschema.validate({"rounds": 3}, schema)
    assert "accuracy" in schema["required"] and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {f.alias or name for name, f in Summary.model_fields.items()}


@pytest.fixture(scope="module")
def hooks():
    sys.path.insert(0, str(ROOT / "docs"))
    import hooks

    return hooks


def test_the_config_reference_lists_every_key(hooks):
    from fl_ee.core.config import Config

    page = hooks.config_page()
    for section, field in Config.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and hasattr(model, "model_fields"):
            for key in model.model_fields:
                assert f"| `{section}.{key}` |" in page
    assert "| `tiers.N.depth` | int | required |" in page
    assert "| `data.test_fraction` | float | `0.2` | (0, 1) |" in page
    assert "| `rounds` | int | `10` | [1, 100000] |" in page  # the documented upper bound


def test_the_cli_reference_has_every_command(hooks):
    page = hooks.cli_page()
    for command in ("run", "resume", "check", "report", "compare", "sweep", "reproduce", "list"):
        assert f"## `fl-ee {command}`" in page


def test_the_recipes_table_lists_every_shipped_recipe_and_its_claims(hooks):
    from fl_ee.studies.recipes import load_recipe, shipped

    table = hooks.recipes_table()
    for name in shipped():
        recipe = load_recipe(name)[0]
        row = (f"| `{name}` | {recipe.title} | {len(recipe.settings)} | {len(recipe.claims)} | "
               f"{recipe.verdict_line('mini')} | {recipe.verdict_line('full')} |")
        assert row in table
        assert all(f"| {claim.says} | `{claim.better}` > `{claim.than}` |" in table for claim in recipe.claims)
    assert hooks.RECIPES_MARK in (hooks.ROOT / "docs" / "how-to" / "reproduce.md").read_text()


def test_the_import_graph_has_no_edge_down_the_layers(hooks):
    graph = hooks.import_graph()
    assert graph.startswith("```mermaid") and "fl_ee_federation --> fl_ee_results" in graph
    assert "fl_ee_results --> fl_ee_federation" not in graph
