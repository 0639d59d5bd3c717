"""Recipes: a published table as data, for ``fl-ee reproduce``.

A recipe (``sims/recipes/<name>.toml``, or any TOML file of the same shape) names the
paper and where its figures come from, the runs that make the table as a sweep does
(a base config and ``--set`` arguments per *setting*, run over seeds), the published
figure of each setting and metric, and the *claims* the table makes: orderings between
two settings on one or more metrics ("distillation raises every exit"). Each recipe has a
``mini`` scale that fits a 2-core CPU and says what it gives up against the paper, and a
``full`` scale, the paper's own setting. ``measured`` keeps the verdicts of the last run
of a scale someone recorded, for ``fl-ee list recipes`` and the documentation.

Published figures are written as the paper prints them (percent); metrics are the
accuracies among a sweep's headline metrics (:func:`fl_ee.results.groups.headline`).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from fl_ee.core.config import parse_overrides, read_toml
from fl_ee.core.errors import UserError
from fl_ee.core.resumable import RESUMABLE_KEYS

SCALES = ("mini", "full")
Scale = Literal["mini", "full"]
VERDICTS = ("holds", "not significant", "reversed", "untested")
Verdict = Literal["holds", "not significant", "reversed", "untested"]
ACCURACIES = ("mean", "worst10", "adaptive_accuracy", "ensemble", "anytime_accuracy", "global_ensemble")
GLOBAL_EXIT = re.compile(r"global_exit([1-9][0-9]*)")
SETTING_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
NOT_MEASURED = "not yet measured"


def exit_of(metric: str) -> int | None:
    """The exit a ``global_exit<i>`` metric reads (``None`` for any other metric)."""
    found = GLOBAL_EXIT.fullmatch(metric)
    return int(found.group(1)) if found else None


def _rule(ok: bool, message: str) -> None:
    if not ok:
        raise PydanticCustomError("recipe", "{message}", {"message": message})


def _check_metric(metric: str) -> str:
    _rule(metric in ACCURACIES or exit_of(metric) is not None,
          f"unknown metric {metric!r}; choose an accuracy: {', '.join(ACCURACIES)} or global_exit<i>")
    return metric


def _check_sets(sets: list[str]) -> list[str]:
    try:
        overrides = parse_overrides(sets)
    except UserError as exc:
        _rule(False, str(exc))
    _rule("seed" not in overrides, "the seeds come from fl-ee reproduce --seeds, not from the recipe")
    return sets


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class ScaleSpec(_Part):
    """One scale of a recipe: the base config every setting starts from, and what it gives up."""

    config: Annotated[str, Field(min_length=1, description="a preset name, or a config file relative to the recipe")]
    set: Annotated[list[str], Field(default_factory=list, description="KEY=VALUE overrides of every run")]
    gives_up: Annotated[str, Field(description="what this scale gives up against the paper's setting")] = ""

    _sets = field_validator("set")(_check_sets)


class SettingSpec(_Part):
    """One row (or column) of the published table: its overrides and published figures."""

    label: Annotated[str, Field(min_length=1, description="the setting in the paper's words")]
    set: Annotated[list[str], Field(default_factory=list, description="KEY=VALUE overrides of this setting")]
    source: Annotated[str, Field(description="where its figures are in the paper (table, row)")] = ""
    published: Annotated[dict[str, float], Field(default_factory=dict,
                                                 description="metric: the published figure, in percent")]

    _sets = field_validator("set")(_check_sets)

    @field_validator("published")
    @classmethod
    def _published(cls, figures: dict[str, float]) -> dict[str, float]:
        for metric, value in figures.items():
            _check_metric(metric)
            _rule(0 <= value <= 100, f"published.{metric}: {value} is no percentage")
        return figures


class Claim(_Part):
    """An ordering the table makes: ``better`` above ``than`` on every one of ``metrics``."""

    says: Annotated[str, Field(min_length=1, description="the claim in words")]
    better: Annotated[str, Field(description="the setting the paper finds better")]
    than: Annotated[str, Field(description="the setting it beats")]
    metrics: Annotated[list[str], Field(min_length=1, description="the metrics it beats it on")]

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, metrics: list[str]) -> list[str]:
        _rule(len(set(metrics)) == len(metrics), "a metric is named twice")
        return [_check_metric(m) for m in metrics]


class Measured(_Part):
    """The verdicts of the last recorded ``fl-ee reproduce`` of a scale (one per claim, in order)."""

    when: Annotated[str, Field(min_length=1, description="the date of the run")]
    seeds: Annotated[int, Field(ge=1, description="seeds per setting")]
    verdicts: Annotated[list[Verdict], Field(description="the claims' verdicts, in the recipe's order")]
    note: Annotated[str, Field(description="why a claim missed (round budget, model scale, a defect)")] = ""


class Recipe(_Part):
    """A published table: the paper, the runs that make it, its figures and its claims."""

    name: Annotated[str, Field(description="the recipe's name: its file's stem, set on loading")] = ""
    title: Annotated[str, Field(min_length=1, description="the paper and the tables, in one line")]
    paper: Annotated[str, Field(min_length=1, description="the citation")]
    url: str = ""
    source: Annotated[str, Field(min_length=1, description="where the published figures were read")]
    setting: Annotated[str, Field(min_length=1, description="the paper's setting, in words")]
    scales: dict[Scale, ScaleSpec]
    settings: Annotated[dict[str, SettingSpec], Field(min_length=2)]
    claims: Annotated[list[Claim], Field(min_length=1)]
    measured: dict[Scale, Measured] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _named_by_file(cls, name: str) -> str:
        _rule(not name, "unknown key (a recipe is named by its file)")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        _rule(set(self.scales) == set(SCALES), f"scales: give both {' and '.join(SCALES)}")
        for name in self.settings:
            _rule(SETTING_NAME.fullmatch(name) is not None,
                  f"settings: {name!r} is no folder name (lower-case letters, digits, . _ -; at most 40)")
        for i, claim in enumerate(self.claims):
            for side in ("better", "than"):
                _rule(getattr(claim, side) in self.settings,
                      f"claims.{i}.{side}: no setting {getattr(claim, side)!r}; "
                      f"choose one of {', '.join(self.settings)}")
            _rule(claim.better != claim.than, f"claims.{i}: a setting cannot beat itself")
        for scale, measured in self.measured.items():
            _rule(len(measured.verdicts) == len(self.claims),
                  f"measured.{scale}.verdicts: {len(measured.verdicts)} verdicts for {len(self.claims)} claims")
        return self

    def config_of(self, scale: Scale, folder: Path) -> str:
        """The base config of ``scale``: its file resolved against the recipe's ``folder``, else a preset name."""
        config = self.scales[scale].config
        return str((folder / config).resolve()) if (folder / config).is_file() else config

    def verdict_line(self, scale: Scale) -> str:
        """The last recorded verdicts of ``scale`` in a few words, or :data:`NOT_MEASURED`."""
        measured = self.measured.get(scale)
        if measured is None:
            return NOT_MEASURED
        counts = ", ".join(f"{measured.verdicts.count(v)} {v}" for v in VERDICTS if v in measured.verdicts)
        return f"{counts} of {len(self.claims)} claims ({measured.seeds} seeds, {measured.when})"


# --------------------------------------------------------------------------------- loading


def recipes_dir() -> Path:
    """The folder of the shipped recipes."""
    return Path(str(resources.files("sims") / "recipes"))


def shipped() -> list[str]:
    """The shipped recipes' names, sorted."""
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def recipe_path(spec: str) -> Path:
    """The file of a recipe: a shipped recipe's name, or a TOML file (one line if neither)."""
    path = Path(spec)
    if path.suffix == ".toml" or "/" in spec:
        if not path.is_file():
            raise UserError(f"recipe file not found: {spec}")
        return path
    if spec not in shipped():
        raise UserError(f"unknown recipe {spec!r}; choose one of {', '.join(shipped())} (fl-ee list recipes) "
                        "or give a recipe file")
    return recipes_dir() / f"{spec}.toml"


def load_recipe(spec: str) -> tuple[Recipe, Path]:
    """A recipe, validated, and the folder its relative config paths are read from."""
    path = recipe_path(spec)
    raw = read_toml(path)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"recipe {path.stem}: {_problem(exc.errors()[0])}") from None
    return recipe.model_copy(update={"name": path.stem}), path.parent


def _problem(error: ErrorDetails) -> str:
    """One pydantic error as ``dotted.key: message``."""
    where = ".".join(str(part) for part in error["loc"])
    message = {"extra_forbidden": "unknown key", "missing": "missing"}.get(error["type"], error["msg"])
    return f"{where}: {message}" if where else message


def check_result_free(overrides: dict[str, object]) -> None:
    """Refuse an override of ``fl-ee reproduce --set`` that would change a result: only where things run may change."""
    for key in overrides:
        if key not in RESUMABLE_KEYS:
            raise UserError(f"a recipe's runs are fixed; --set may change only keys that change no result "
                            f"({', '.join(RESUMABLE_KEYS)})", key=f"--set {key}")
