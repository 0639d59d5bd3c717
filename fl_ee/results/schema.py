"""The schema of ``summary.json``: typed pydantic models, and the JSON Schema they give.

:func:`fl_ee.results.summary.build_summary` writes the file; :class:`Summary` reads it back
typed (the Python API's ``Run.summary``), and ``Summary.model_json_schema()`` is the JSON
Schema the documentation ships. Accuracies are fractions in [0, 1]; ``None`` (JSON
``null``) is a figure that no client could give (a tier nobody evaluated, an exit no
client holds). Maps keyed by exit use the exit's number from 1 as a string (``"1"``);
maps keyed by tier use the tier's name. Every model refuses keys it does not know, so a
summary that drifts from this schema fails its tests rather than a user's notebook.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Fraction = float | None
ByExit = dict[str, Fraction]
ByTier = dict[str, Fraction]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Personalised(_Strict):
    """Each evaluated client's personalised accuracy, averaged: by tier, by exit, adaptive and ensemble."""

    mean: Fraction = Field(description="mean over clients of the accuracy at each client's deepest exit")
    by_tier: ByTier = Field(description="``mean`` over each tier's clients")
    by_exit: ByExit = Field(description="mean over the clients that hold the exit")
    adaptive_accuracy: Fraction = Field(description="under the configured exit policy")
    expected_flops: float | None = Field(description="FLOPs per sample under the configured exit policy")
    evaluated_clients: int = Field(description="clients with an evaluation (their latest counts)")
    by_tier_exit: dict[str, ByExit] = Field(description="``by_exit`` over each tier's clients")
    adaptive_by_tier: ByTier = Field(description="``adaptive_accuracy`` over each tier's clients")
    ensemble: Fraction = Field(description="the average of the client's exits' softmax outputs")
    ensemble_by_tier: ByTier = Field(description="``ensemble`` over each tier's clients")


class GlobalAccuracy(_Strict):
    """The global model's accuracy on the whole test set, per exit and for the exits' ensemble."""

    by_exit: ByExit = Field(default_factory=dict, description="each exit of the full-depth global model")
    ensemble: Fraction = Field(None, description="the average of the global exits' softmax outputs")
    modal_share: ByExit = Field(default_factory=dict, description="the share of the test images each exit gives its "
                                "most frequent class (1.0: the exit has collapsed to one class)")


class Accuracy(_Strict):
    """``accuracy``: the personalised figures (clients' own data) and the global model's."""

    personalised: Personalised
    global_: GlobalAccuracy = Field(alias="global")


class Fairness(_Strict):
    """``fairness``: the spread of per-client accuracy at each client's deepest exit."""

    mean: Fraction = Field(description="mean over clients")
    std: Fraction = Field(description="standard deviation over clients")
    min: Fraction = Field(description="the worst client")
    worst10: Fraction = Field(description="mean of the worst 10% of clients (ceil(n/10), at least one; q-FFL)")
    best10: Fraction = Field(description="mean of the best 10% of clients (ceil(n/10), at least one; q-FFL)")
    bottom_decile: Fraction = Field(None, description="pFL-Bench's bottom decile: the value at 0-based position "
                                                      "n // 10 of the clients' accuracies in ascending order")
    top_decile: Fraction = Field(None, description="pFL-Bench's top decile: the value at 0-based position "
                                                   "9n // 10 of the clients' accuracies in ascending order")
    jain: Fraction = Field(description="Jain's index (sum x)^2 / (n sum x^2)")
    gini: Fraction = Field(description="Gini coefficient of the clients' accuracies")
    by_tier: ByTier = Field(description="mean over each tier's clients")
    tier_gap: Fraction = Field(description="best tier's mean minus worst tier's")


class TierEfficiency(_Strict):
    """Where samples leave under the configured exit policy, and what that saves."""

    exit_distribution: ByExit = Field(description="share of test samples leaving at each exit")
    expected_flops: float | None = Field(description="FLOPs per sample")
    flops_saving: Fraction = Field(description="1 - expected FLOPs / FLOPs of the deepest exit held")


class Efficiency(TierEfficiency):
    """``efficiency``: :class:`TierEfficiency` over every evaluated client, and by tier."""

    by_tier: dict[str, TierEfficiency | None]


class PolicyFigures(_Strict):
    """A deployed policy's figures: accuracy, FLOPs per sample, saving, and latency and energy on the tier's device."""

    accuracy: Fraction
    expected_flops: float | None
    flops_saving: Fraction
    latency_ms: float | None
    energy_mj: float | None = Field(description="energy per sample, mJ: the latency at the tier's training_w")


class PolicyEntry(PolicyFigures):
    """:class:`PolicyFigures` over every evaluated client and by tier."""

    by_tier: dict[str, PolicyFigures | None]


class PolicyRow(PolicyEntry):
    """One exit policy with one threshold rule and scope."""

    policy: str
    thresholds: str
    scope: str
    drop: float | None = Field(description="accuracy lost against the deepest exit")


class Policies(_Strict):
    """``policies``: the deepest exit, then every policy x threshold rule x scope."""

    deepest: PolicyEntry
    rows: list[PolicyRow]


class Anytime(PolicyEntry):
    """The configured exit policy as deployed."""

    policy: str
    thresholds: str
    scope: str
    drop: float | None
    exit_distribution: ByExit


class SubnetExit(_Strict):
    """One exit used alone."""

    accuracy: Fraction
    flops: float | None


class Subnet(_Strict):
    """Each exit used alone, over every evaluated client and by tier."""

    by_exit: dict[str, SubnetExit]
    by_tier: dict[str, dict[str, SubnetExit] | None]


class Deployment(_Strict):
    """``deployment``: each exit alone (subnet), the configured policy (anytime), its curves (budgeted)."""

    subnet: Subnet
    anytime: Anytime
    budgeted: dict[str, dict[str, Any]] = Field(
        description="by_tier: tier -> {curves: policy -> {thresholds, accuracy, expected_flops}, pareto: [[policy, "
                    "index], ...]} (null for a tier nobody evaluated)")


class CalibrationFigures(_Strict):
    """Expected calibration error before and after temperature scaling, and overthinking."""

    ece: Fraction
    ece_calibrated: Fraction
    overthinking: Fraction = Field(description="share of samples an earlier exit got right but the deepest got wrong")


class Calibration(CalibrationFigures):
    """``calibration``: :class:`CalibrationFigures` pooled, per exit and by tier, with the reliability bins."""

    ece_by_exit: ByExit
    ece_calibrated_by_exit: ByExit
    temperature_by_exit: dict[str, float | None]
    reliability: dict[str, list[list[float]] | None] = Field(
        description="before / after: per confidence bin, [samples, right answers, summed confidence]")
    by_tier: dict[str, CalibrationFigures | None]


class Clients(_Strict):
    """``clients``: how many clients the run has, in total and by tier."""

    total: int = Field(description="clients in the run")
    by_tier: dict[str, int] = Field(description="clients in each tier")


class Submodel(_Strict):
    """A tier's submodel: its depth and width ratio, one sample's forward FLOPs through it, its parameters."""

    depth: int = Field(description="stages and exits it holds")
    width: float = Field(description="width ratio: it holds the first ceil(width x c) channels of every layer")
    flops: float = Field(description="one sample's forward FLOPs through the submodel and every exit of it")
    params: int = Field(description="its parameters (buffers excluded)")


class RoundTimes(_Strict):
    """Percentiles of the round time on the virtual clock, in seconds."""

    p50: float | None
    p90: float | None
    max: float | None


class Stragglers(_Strict):
    """``stragglers``: round times, late and dropped updates, participation by tier."""

    round_time_s: RoundTimes
    late_fraction: Fraction = Field(description="late updates over sampled client-rounds")
    dropped_updates: int = Field(description="updates started but not aggregated: late + failed + rejected")
    unavailable: int = Field(description="sampled clients that were offline")
    participation_by_tier: ByTier = Field(description="share of a tier's sampled clients whose update was aggregated")
    wasted_compute_s: float = Field(description="simulated seconds of training whose update did not count")
    outcomes_by_tier: dict[str, dict[str, int]] = Field(description="tier -> outcome -> clients (sampled, ok, ...)")


class Energy(_Strict):
    """``energy``: the sampled clients' energy on the virtual clock (``sims.clock.energy``), summed over rounds."""

    total_j: float = Field(description="joules of every client round: training, idle while transferring, radio")
    by_tier_j: dict[str, float] = Field(description="tier -> joules")
    per_accuracy_point_j: float | None = Field(description="total_j per percentage point of the final personalised "
                                                           "mean accuracy (null without one)")


class Async(_Strict):
    """``async``: the updates an asynchronous run's server aggregated (``simulation.mode = "async"``)."""

    updates: int = Field(description="updates aggregated into a server version")
    update_share_by_tier: dict[str, float | None] = Field(
        description="tier -> its share of the aggregated updates (null with none at all)")
    mean_staleness: float | None = Field(description="versions made between an aggregated update's start and its "
                                                     "aggregation, on average")
    mean_staleness_by_tier: dict[str, float | None] = Field(description="tier -> its updates' mean staleness")


class Gap(_Strict):
    """pFL-Bench's generalisation gap: the participating clients' figure minus the unseen clients'."""

    mean: float | None = Field(description="of ``personalised.mean``")
    by_tier: dict[str, float | None] = Field(description="of ``personalised.by_tier``")
    by_exit: dict[str, float | None] = Field(description="of ``personalised.by_exit``")
    adaptive_accuracy: float | None = Field(description="of ``personalised.adaptive_accuracy``")
    ensemble: float | None = Field(description="of ``personalised.ensemble``")


class Unseen(_Strict):
    """``unseen``: the clients held out of training (``data.unseen_fraction``), evaluated apart.

    Each unseen client adapts as its client algorithm does, from the received global model,
    in one training round whose result it evaluates with and does not keep.
    """

    client_ids: list[int] = Field(description="the unseen clients")
    clients: Clients = Field(description="how many, in total and by tier")
    personalised: Personalised = Field(description="their personalised accuracy, as ``accuracy.personalised``")
    fairness: Fairness = Field(description="the spread of their accuracy, as ``fairness``")
    gap: Gap = Field(description="participating minus unseen")


class Summary(_Strict):
    """``summary.json``: a finished run's final figures."""

    accuracy: Accuracy
    fairness: Fairness
    efficiency: Efficiency
    policies: Policies
    deployment: Deployment
    calibration: Calibration
    clients: Clients
    submodels: dict[str, Submodel] = Field(default_factory=dict, description="each tier's submodel, by tier")
    rounds: int = Field(description="rounds run")
    seed: int = Field(description="the run's seed")
    virtual_time_s: float = Field(description="the virtual clock at the end of the run, in seconds")
    time_to_accuracy_s: float | None = Field(description="virtual time at which the personalised mean first "
                                                         "reached simulation.target_accuracy")
    stragglers: Stragglers
    energy: Energy | None = Field(None, exclude_if=lambda value: value is None,  # absent in older run directories
                                  description="the clients' energy, by tier and per point of accuracy")
    warnings: list[str] = Field(description="what makes the run degenerate, one line each")
    async_: Async | None = Field(None, alias="async", exclude_if=lambda value: value is None,
                                 description="only with simulation.mode = async: who reached the model, how stale")
    unseen: Unseen | None = Field(None, exclude_if=lambda value: value is None,  # absent, never null, in the file
                                  description="only with data.unseen_fraction > 0; every other figure but "
                                              "``clients`` is over the clients that take part in training")


def json_schema_text() -> str:
    """The JSON Schema of ``summary.json`` as the documentation ships it (``docs/reference/summary.schema.json``)."""
    import json

    return json.dumps(Summary.model_json_schema(by_alias=True), indent=2) + "\n"


if __name__ == "__main__":  # python -m fl_ee.results.schema > docs/reference/summary.schema.json
    print(json_schema_text(), end="")
