"""MkDocs hooks: the reference pages generated from the code, so they cannot drift from it.

* ``reference/config.md``: every configuration key from the pydantic models
  (:mod:`fl_ee.core.config`): type, default, range and description;
* ``reference/cli.md``: every command and option from the argument parser (:mod:`fl_ee.cli`);
* ``reference/summary-schema.md``: every ``summary.json`` key from :mod:`fl_ee.results.schema`
  (the JSON Schema itself is ``reference/summary.schema.json``, kept in step by a test);
* the architecture page's import graph, from the same import scan that
  ``tests/test_layers.py`` enforces;
* the reproduce page's table of shipped recipes, each with its last recorded verdicts,
  from ``sims/recipes/*.toml``.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
GRAPH_MARK = "<!-- import graph -->"
RECIPES_MARK = "<!-- recipes table -->"


def _type_name(annotation: Any) -> str:
    """A short readable name of a field's type (``int``, ``"a" | "b"``, ``list[int]``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _range(field: Any) -> str:
    """The field's bounds and length limits as text (``>= 1``, ``(0, 1]``)."""
    bounds = {}
    for meta in field.metadata:
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(meta, name, None) is not None:
                bounds[name] = getattr(meta, name)
    low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}" if "gt" in bounds else None
    high = f"{bounds['le']}]" if "le" in bounds else f"{bounds['lt']})" if "lt" in bounds else None
    parts = []
    if low and high:
        parts.append(f"{low}, {high}")
    elif low:
        parts.append((">= " if low[0] == "[" else "> ") + low[1:])
    elif high:
        parts.append(("<= " if high[-1] == "]" else "< ") + high[:-1])
    if "min_length" in bounds:
        parts.append(f"at least {bounds['min_length']} items")
    if "max_length" in bounds:
        parts.append(f"at most {bounds['max_length']} items")
    return "; ".join(parts)


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        return "" if hasattr(value, "model_fields") else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    return f"`{field.default!r}`".replace("'", '"')


def _holds_sections(annotation: Any) -> bool:
    """Whether a field is a section (a model) or a list of them: those get a table of their own."""
    from pydantic import BaseModel

    inner = [annotation, *typing.get_args(annotation)]
    return any(isinstance(t, type) and issubclass(t, BaseModel) for t in inner)


def config_page() -> str:
    """``reference/config.md``: a table per section of :class:`fl_ee.core.config.Config`."""
    from pydantic import BaseModel

    from fl_ee.core.config import Config, TierConfig

    lines = ["# Configuration keys", "",
             "Generated from the pydantic models in `fl_ee/core/config.py`: every key a config file or "
             "`--set` may set, with its type, default, allowed range and meaning. Any other key is refused "
             "in one line naming it. A config is TOML; `--set KEY=VALUE` takes the dotted key "
             "(`tiers.0.depth` indexes the tier list) and a TOML literal.", ""]

    def table(model: type[BaseModel], prefix: str) -> list[str]:
        rows = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if _holds_sections(field.annotation):
                continue
            rows.append(f"| `{prefix}{name}` | {_type_name(field.annotation)} | {_default(field)} | {_range(field)} | "
                        f"{(field.description or '').replace('|', '/')} |")
        return rows

    lines += ["## Top level", "", *table(Config, ""), ""]
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += [f"## `[{name}]`", "", (annotation.__doc__ or "").strip().splitlines()[0], "",
                      *table(annotation, f"{name}."), ""]
    lines += ["## `[[tiers]]`", "", (TierConfig.__doc__ or "").strip().splitlines()[0] +
              " A config lists one table per tier; `tiers.N.KEY` sets tier N's key.", "",
              *table(TierConfig, "tiers.N."), ""]
    return "\n".join(lines)


def cli_page() -> str:
    """``reference/cli.md``: the help of ``fl-ee`` and of each of its commands."""
    from fl_ee.cli import _parser

    parser = _parser()
    lines = ["# Command line", "", "Generated from the argument parser in `fl_ee/cli.py`. Every error is one line "
             "on stderr, `fl-ee: error: ...`, with exit code 2 for bad input, 1 for a failed run, 3 for a run "
             "that diverged and 130 for an interrupted one.", "", "```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                lines += [f"## `fl-ee {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _schema_rows(schema: dict[str, Any], node: dict[str, Any], path: str, rows: list[str]) -> None:
    """One row per key of ``node`` (a JSON Schema object), recursing into the objects it refers to."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        _schema_rows(schema, schema["$defs"][name], path, rows)
        return
    for option in node.get("anyOf", []):
        if option.get("type") != "null":
            _schema_rows(schema, option, path, rows)
    for key, sub in node.get("properties", {}).items():
        dotted = f"{path}.{key}" if path else key
        about = sub.get("description") or _referred(schema, sub).get("description") or ""
        rows.append(f"| `{dotted}` | {_json_type(schema, sub)} | {' '.join(about.split()).replace('|', '/')} |")
        _schema_rows(schema, sub, dotted, rows)
    if isinstance(node.get("additionalProperties"), dict):
        _schema_rows(schema, node["additionalProperties"], f"{path}.<key>", rows)
    if isinstance(node.get("items"), dict):
        _schema_rows(schema, node["items"], f"{path}[]", rows)


def _referred(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The definition ``node`` refers to (directly or as the non-null option of ``anyOf``), else ``{}``."""
    for option in [node, *node.get("anyOf", [])]:
        if "$ref" in option:
            return dict(schema["$defs"][option["$ref"].rsplit("/", 1)[-1]])
    return {}


def _json_type(schema: dict[str, Any], node: dict[str, Any]) -> str:
    if "$ref" in node:
        return "object"
    if "anyOf" in node:
        return " or ".join(_json_type(schema, option) for option in node["anyOf"])
    kind = node.get("type", "any")
    if kind == "array" and isinstance(node.get("items"), dict):
        return f"array of {_json_type(schema, node['items'])}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map to {_json_type(schema, node['additionalProperties'])}"
    return str(kind)


def summary_page() -> str:
    """``reference/summary-schema.md``: every key of ``summary.json`` with its JSON type and meaning."""
    from fl_ee.results.schema import Summary

    schema = Summary.model_json_schema(by_alias=True)
    rows = ["| key | type | meaning |", "|---|---|---|"]
    _schema_rows(schema, schema, "", rows)
    return "\n".join(["# `summary.json` schema", "",
                      "Generated from the pydantic models in `fl_ee/results/schema.py`; the JSON Schema file is "
                      "[summary.schema.json](summary.schema.json), and every run of the test suite is validated "
                      "against it. `summary.json` is written last, so its presence marks a finished run; the "
                      "Python API reads it back typed (`fl_ee.load_run(DIR).summary`).", "",
                      "Accuracies are fractions in [0, 1]; `null` is a figure no client could give (a tier "
                      "nobody evaluated, an exit no client holds). `<key>` stands for a tier's name or an exit's "
                      "number from 1 (as a string).", "", *rows, ""])


def import_graph() -> str:
    """A Mermaid graph of the packages' imports, bottom layer first, from ``tests/test_layers.py``'s scan."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_layers

    def group(module: str) -> str:
        index = test_layers.layer_of(module)
        members = sorted((m for m in test_layers.LAYERS[index] if module == m or module.startswith(m + ".")),
                         key=len)
        return members[-1]

    edges = sorted({(group(a), group(b)) for a, targets in test_layers.GRAPH.items() for b in targets
                    if group(a) != group(b)})
    nodes = sorted({n for edge in edges for n in edge}, key=lambda n: (test_layers.layer_of(n), n))
    ids = {n: n.replace(".", "_") for n in nodes}
    lines = ["```mermaid", "flowchart BT"]
    lines += [f'    {ids[n]}["{n}"]' for n in nodes]
    lines += [f"    {ids[a]} --> {ids[b]}" for a, b in edges]
    lines.append("```")
    return "\n".join(lines)


def recipes_table() -> str:
    """Every shipped recipe: what it reproduces, its runs, and per claim the last recorded verdict of each scale."""
    from fl_ee.studies.recipes import SCALES, load_recipe, shipped

    lines = ["| recipe | reproduces | settings | claims | mini | full |", "|---|---|---|---|---|---|"]
    details = []
    for name in shipped():
        recipe = load_recipe(name)[0]
        lines.append(f"| `{name}` | {recipe.title} | {len(recipe.settings)} | {len(recipe.claims)} | "
                     f"{recipe.verdict_line('mini')} | {recipe.verdict_line('full')} |")
        details += [f"### `{name}`", "", f"{recipe.paper} Figures: {recipe.source}", "",
                    f"The `mini` scale gives up: {recipe.scales['mini'].gives_up}", "",
                    "| claim | settings | metrics | mini | full |", "|---|---|---|---|---|"]
        for i, claim in enumerate(recipe.claims):
            found = [recipe.measured[s].verdicts[i] if s in recipe.measured else "not yet measured" for s in SCALES]
            details.append(f"| {claim.says} | `{claim.better}` > `{claim.than}` | {', '.join(claim.metrics)} | "
                           f"{' | '.join(found)} |")
        details += [""] + [f"Note ({s}): {recipe.measured[s].note}" for s in SCALES
                           if s in recipe.measured and recipe.measured[s].note] + [""]
    return "\n".join([*lines, "", *details])


def on_files(files: Files, config: Any) -> Files:
    """Add the generated reference pages."""
    sys.path.insert(0, str(ROOT))
    for uri, text in (("reference/config.md", config_page()), ("reference/cli.md", cli_page()),
                      ("reference/summary-schema.md", summary_page())):
        files.append(File.generated(config, uri, content=text))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Put the import graph and the recipes table where their pages mark them."""
    if GRAPH_MARK in markdown:
        markdown = markdown.replace(GRAPH_MARK, import_graph())
    if RECIPES_MARK in markdown:
        markdown = markdown.replace(RECIPES_MARK, recipes_table())
    return markdown
