"""Client algorithms: what a client does locally, chosen by ``personalisation.mode`` (the client-side plug-in point).

A :class:`ClientAlgorithm` is built for each client call from the run config, with
``personalisation.options`` as its constructor's keyword arguments, and has five hooks:

* :meth:`~ClientAlgorithm.train`, a training round: it gets a :class:`LocalTraining` (the
  received submodel, which it trains in place, the client's data, the round, the client
  id, a seeded generator, the round's training settings, whether ``ic-only`` froze the
  backbone, and the client's state) and returns the :class:`Losses`.
  :meth:`LocalTraining.shared_step` trains the shared tensors as fl-ee does, with the
  strategy's client terms (FedProx's ``prox_mu``, FedDyn's: :mod:`fl_ee.learning.feddyn`).
* :meth:`~ClientAlgorithm.kept`, after ``train``: the state the client keeps, named arrays
  under ``<namespace>/``. The client holds it in its ``Context.state``, saves it on disk
  every round it trains and reads it back in a resumed run; the next call sees it as
  ``state`` (all namespaces: ``feddyn/`` is FedDyn's ``g_prev``).
* :meth:`~ClientAlgorithm.sent`: which tensors of the trained submodel the client sends back.
* :meth:`~ClientAlgorithm.evaluation`: the submodel and exit heads the client evaluates.
  An unseen client (``data.unseen_fraction``), which never trains, first runs ``train``
  and ``kept`` once from an empty state on a copy of the received submodel, and
  evaluates with what it would keep (:func:`newcomer_state`); nothing of it is kept.
* :meth:`~ClientAlgorithm.train_flops`: what a training round computes beyond the shared
  step, which the virtual clock charges (:func:`sims.emulator.client_flops`).

A client sends back the part of its shared slice (:func:`~fl_ee.learning.scheme.returned_state`
of the trained submodel) that :meth:`~ClientAlgorithm.sent` picks, all of it by default
(:func:`sent_state`); the server expects exactly those tensors and the clock charges their
bytes. Part of the slice can be personal instead: an algorithm keeps it with
:meth:`~ClientAlgorithm.kept` and lays it over the received submodel in ``train`` and
``evaluation`` (FedPer's heads, :mod:`fl_ee.learning.pfl`). The shipped modes are in
:mod:`fl_ee.learning.personal` and :mod:`fl_ee.learning.pfl`; a user's class is named by
``package.module:Class`` or registered in the ``fl_ee.client_algorithms`` entry-point
group, as strategies are. What a hook returns is checked; a hook that raises or returns
something else fails the client, whose traceback the server files. Nothing here knows
about Flower.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from fl_ee.core.config import Config, TrainingConfig
from fl_ee.core.errors import UserError
from fl_ee.core.plugins import build, plugin_class, registered
from fl_ee.core.seeding import Stream, rng
from fl_ee.learning.feddyn import NAMESPACE as FEDDYN
from fl_ee.learning.scheme import returned_state
from fl_ee.learning.training import stage_features, train_exits, train_joint
from fl_ee.learning.widths import OrderedDropout, ordered_dropout_loss
from fl_ee.models import EarlyExitNet, Flops

ENTRY_POINT_GROUP = "fl_ee.client_algorithms"
SHIPPED = {
    "exits": "fl_ee.learning.personal:Exits",
    "self-distill": "fl_ee.learning.personal:SelfDistill",
    "finetune": "fl_ee.learning.personal:Finetune",
    "none": "fl_ee.learning.algorithm:ClientAlgorithm",
    "fedper": "fl_ee.learning.pfl.fedper:FedPer",
    "lg-fedavg": "fl_ee.learning.pfl.lgfedavg:LGFedAvg",
    "fedrep": "fl_ee.learning.pfl.fedrep:FedRep",
    "fedbabu": "fl_ee.learning.pfl.fedbabu:FedBABU",
    "ditto": "fl_ee.learning.pfl.ditto:Ditto",
    "apfl": "fl_ee.learning.pfl.apfl:APFL",
}

T = TypeVar("T")
SharedTerm = Callable[[nn.Module, str], Callable[[], torch.Tensor]]  # (module, its key prefix) -> a loss term


@dataclass(frozen=True)
class Losses:
    """A training round's mean losses: the shared step's and, where there is one, the personal step's."""

    train: float
    personal: float | None = None


@dataclass
class LocalTraining:
    """A client's training round, as :meth:`ClientAlgorithm.train` gets it.

    ``model`` is the received submodel, on the client's device with ``x`` and ``y``; it
    is trained in place and what it holds afterwards is what the client sends.
    ``training`` is this round's training config (``cfg.training`` with the round's
    distillation weight); ``frozen``: ``ic-only`` froze the backbone, so only the exits
    may train. ``state`` is the client's state as its last training round left it (every
    namespace; empty before its first), read-only. ``shared_term`` is the strategy's term
    on the shared tensors (FedDyn's), which :meth:`shared_step` adds; ``dropout`` the
    widths its end-to-end steps draw from (FjORD's, :mod:`fl_ee.learning.widths`); ``max_steps``
    the SGD steps the shared step may take (``None``: all; partial work under a deadline).
    """

    model: EarlyExitNet
    x: torch.Tensor
    y: torch.Tensor
    server_round: int
    client_id: int
    generator: torch.Generator
    training: TrainingConfig
    frozen: bool
    state: Mapping[str, torch.Tensor]
    cfg: Config
    shared_term: SharedTerm | None = None
    dropout: OrderedDropout | None = None
    max_steps: int | None = None

    @functools.cached_property
    def features(self) -> list[torch.Tensor]:
        """Every stage's output for all of ``x``, computed on first use and kept.

        Read before the backbone trains (or under a frozen one), they are the received backbone's.
        """
        return stage_features(self.model, self.x)

    def shared_step(self) -> float:
        """Train the shared tensors as fl-ee does; the mean loss.

        Backbone and exits end to end, or only the exits over :attr:`features` when
        ``frozen``, for ``training.local_epochs`` (at most :attr:`max_steps` steps), with FedProx's and the
        strategy's terms.
        """
        t = self.training
        if self.frozen:
            term = self.shared_term(self.model.exits, "exits.") if self.shared_term else None
            return train_exits(self.model.exits, self.features, self.y, t, t.local_epochs, self.generator,
                               t.prox_mu, term, self.max_steps)
        term = self.shared_term(self.model, "") if self.shared_term else None
        step = ordered_dropout_loss(self.model, self.dropout, rng(self.cfg.seed, Stream.WIDTHS, self.server_round,
                                                                  self.client_id), t) if self.dropout else None
        return train_joint(self.model, self.x, self.y, t, self.generator, augment=self.cfg.data.augment, penalty=term,
                           step_loss=step, max_steps=self.max_steps)


@dataclass
class LocalEvaluation:
    """A client's evaluation, as :meth:`ClientAlgorithm.evaluation` gets it.

    ``model`` is the received submodel and ``x_train``, ``y_train`` the client's training
    data, on its device; ``generator`` is seeded for this client and round (fine-tuning
    draws from it); ``training`` is the round's training config; ``state`` the client's
    state as its last training round left it.
    """

    model: EarlyExitNet
    x_train: torch.Tensor
    y_train: torch.Tensor
    server_round: int
    client_id: int
    generator: torch.Generator
    training: TrainingConfig
    state: Mapping[str, torch.Tensor]
    cfg: Config


class ClientAlgorithm:
    """The global model as received: the shared step, nothing kept, the received submodel evaluated.

    The base of every client algorithm: override the hooks that differ. The keyword
    arguments of ``__init__`` after ``cfg`` are its options (``personalisation.options``;
    report a bad value with :func:`fl_ee.core.plugins.check_option`). ``namespace`` prefixes
    the keys of its state (default: the class name in lower case).
    """

    namespace: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give a subclass that names no ``namespace`` its class name in lower case."""
        super().__init_subclass__(**kwargs)
        if "namespace" not in cls.__dict__:
            cls.namespace = cls.__name__.lower()

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def train(self, local: LocalTraining) -> Losses:
        """Train ``local.model`` in place; its losses. The default is the shared step alone."""
        return Losses(local.shared_step())

    def kept(self, local: LocalTraining) -> Mapping[str, torch.Tensor | np.ndarray]:
        """After :meth:`train`: the arrays the client keeps, each named ``<namespace>/<name>``. Default: none."""
        return {}

    def sent(self, keys: Sequence[str]) -> Collection[str]:
        """Which of ``keys`` the client sends back. Default: all of them.

        ``keys`` name the tensors of its slice (only the exits once ``ic-only`` froze the
        backbone); the others stay on the client, to be kept or dropped. A function of the
        names alone: the server checks each update against it and the virtual clock
        charges the bytes of what it picks.
        """
        return keys

    def evaluation(self, local: LocalEvaluation) -> tuple[EarlyExitNet, nn.ModuleList | None]:
        """The submodel to evaluate and the exit heads to use in place of its own (``None``: its own)."""
        return local.model, None

    def train_flops(self, flops: Flops, depth: int, num_train: int, frozen: bool) -> float:
        """FLOPs a training round computes beyond the shared step, for a client of ``depth`` with ``num_train`` samples.

        ``flops`` holds the network's forward FLOPs per sample by stage and exit. Default: 0.
        """
        return 0.0


# ---------------------------------------------------------------------------- checked calls


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _hook(algorithm: ClientAlgorithm, name: str) -> str:
    return f"{type(algorithm).__module__}:{type(algorithm).__qualname__}.{name}"


def train_round(algorithm: ClientAlgorithm, local: LocalTraining) -> tuple[Losses, dict[str, np.ndarray]]:
    """:meth:`~ClientAlgorithm.train`, then :meth:`~ClientAlgorithm.kept` as NumPy arrays; both checked.

    Raises ``TypeError`` naming the hook whose result is not what it must be.
    """
    losses = algorithm.train(local)
    if not (isinstance(losses, Losses) and _is_number(losses.train)
            and (losses.personal is None or _is_number(losses.personal))):
        raise TypeError(f"{_hook(algorithm, 'train')} returned {losses!r}; it must return "
                        "fl_ee.learning.algorithm.Losses(train, personal=None) of numbers")
    kept = algorithm.kept(local)
    prefix = f"{algorithm.namespace}/"
    if not isinstance(kept, Mapping) or (kept and algorithm.namespace in ("", FEDDYN)):
        raise TypeError(f"{_hook(algorithm, 'kept')} returned {type(kept).__name__} under namespace "
                        f"{algorithm.namespace!r}; it must return a mapping of arrays, under a namespace other "
                        f"than '' and {FEDDYN!r} (FedDyn's own)")
    arrays = {}
    for key, value in kept.items():
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if not (isinstance(key, str) and key.startswith(prefix) and isinstance(array, np.ndarray)
                and (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_)):
            raise TypeError(f"{_hook(algorithm, 'kept')}: entry {key!r} = {type(value).__name__}; every entry must "
                            f"be a numeric array (torch or NumPy) named {prefix}<name>")
        arrays[key] = np.ascontiguousarray(array)
    return Losses(float(losses.train), None if losses.personal is None else float(losses.personal)), arrays


def newcomer_state(algorithm: ClientAlgorithm, local: LocalTraining) -> dict[str, torch.Tensor]:
    """The state a client without any keeps after one training round: what an unseen client evaluates with.

    :func:`train_round` on ``local`` (its ``state`` empty; its ``model`` a copy of the
    received submodel, which is trained in place and dropped), so every client algorithm
    adapts as its own hooks do: ``exits`` trains personal heads, a personal-head method
    its head; one that keeps nothing (``finetune``, ``none``) is left to its
    :meth:`~ClientAlgorithm.evaluation`.
    """
    return {key: torch.from_numpy(value) for key, value in train_round(algorithm, local)[1].items()}


def evaluation_model(algorithm: ClientAlgorithm, local: LocalEvaluation) -> tuple[EarlyExitNet, nn.ModuleList | None]:
    """:meth:`~ClientAlgorithm.evaluation`, checked: a submodel and ``None`` or one head per stage."""
    result = algorithm.evaluation(local)
    ok = isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], EarlyExitNet)
    if ok and result[1] is not None:
        ok = isinstance(result[1], nn.ModuleList) and len(result[1]) == len(result[0].exits)
    if not ok:
        raise TypeError(f"{_hook(algorithm, 'evaluation')} returned {result!r:.200}; it must return "
                        "(an EarlyExitNet, None or an nn.ModuleList of one head per stage)")
    return result


def sent_state(algorithm: ClientAlgorithm, state: Mapping[str, T], depth: int, frozen: bool) -> dict[str, T]:
    """What a depth-``depth`` client sends back of ``state``: :meth:`~ClientAlgorithm.sent`, checked.

    The keys it picks of the client's returned slice (:func:`~fl_ee.learning.scheme.returned_state`);
    anything but a collection of those names is a :class:`~fl_ee.core.errors.UserError`.
    """
    returned = returned_state(state, depth, frozen)
    picked = algorithm.sent(list(returned))
    if not (isinstance(picked, Collection) and not isinstance(picked, str | bytes)
            and all(isinstance(key, str) for key in picked) and set(picked) <= set(returned)):
        raise UserError(f"{_hook(algorithm, 'sent')} returned {picked!r:.200}; it must return a collection of the "
                        "names it was given", key="personalisation.mode")
    chosen = set(picked)
    return {key: value for key, value in returned.items() if key in chosen}


def round_flops(algorithm: ClientAlgorithm, flops: Flops, depth: int, num_train: int, frozen: bool) -> float:
    """:meth:`~ClientAlgorithm.train_flops`, checked: a number >= 0."""
    value = algorithm.train_flops(flops, depth, num_train, frozen)
    if not (_is_number(value) and value >= 0):
        raise UserError(f"{_hook(algorithm, 'train_flops')} returned {value!r}; it must return FLOPs, a number >= 0",
                        key="personalisation.mode")
    return float(value)


# --------------------------------------------------------------------------------- registry


def available() -> dict[str, str]:
    """Every short name (shipped and entry-point plug-ins) to its ``module:Class`` path."""
    return registered(SHIPPED, ENTRY_POINT_GROUP)


def algorithm_class(name: str) -> type[ClientAlgorithm]:
    """Resolve ``name`` to a :class:`ClientAlgorithm` subclass."""
    return plugin_class(name, available(), ClientAlgorithm, kind="client algorithm",
                        base_name="fl_ee.learning.algorithm.ClientAlgorithm", key="personalisation.mode")


def build_algorithm(cfg: Config, cls: type[ClientAlgorithm] | None = None) -> ClientAlgorithm:
    """The configured client algorithm (``cls``, if already resolved); ``personalisation.options`` are its options."""
    p = cfg.personalisation
    return build(cls or algorithm_class(p.mode), p.mode, p.options, {"cfg": cfg}, "personalisation.options")
