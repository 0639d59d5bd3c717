"""Availability and capacity traces: when each client is online, and how fast it is, read from JSON (never pickle).

A trace file is a JSON object mapping a client id (as a string) to its online intervals
``[start_s, end_s]`` on the virtual clock: ``{"0": [[0, 3600]], "1": []}``. A client missing
from the file is always online; an empty list means never online; clients the run does not
have are ignored, so one trace serves runs of any size. Intervals must be finite,
non-negative, ``start_s < end_s``, and sorted without overlap.

``sims/availability/example-20.json`` is a generated example for 20 clients over 200 s:
alternating online and offline spells, exponential with means 8 s and 4 s (a client
starts online with chance 2/3), drawn with ``numpy.random.default_rng(0)``; the command
is in ``docs/explanation/clock.md``. ``example-100.json`` is the same for 100 clients
(its first 20 are ``example-20.json``'s).

:func:`from_fedscale` converts FedScale's client-behaviour trace (the structure of its
``client_behave_trace``: per client ``active`` and ``inactive`` times in seconds, the
ends of its online spells, repeating every ``finish_time`` seconds, as FedScale's
``ClientMetadata.is_active`` replays it) from the same structure written as JSON;
FedScale publishes that trace as a pickle, which fl-ee does not read.

A capacity trace (``simulation.capacity_trace``) is a JSON object mapping a client id to
some of ``compute_gflops``, ``download_mbps`` and ``upload_mbps``, which replace its tier's
figures (``{"3": {"compute_gflops": 2.5, "upload_mbps": 0.8}}``); :func:`capacity_from_fedscale`
converts FedScale's device-capacity trace (``computation`` in ms per sample,
``communication`` in kbit/s) written as JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from fl_ee.core.errors import UserError

Intervals = tuple[tuple[float, float], ...]
KEY, CAPACITY_KEY = "simulation.availability_trace", "simulation.capacity_trace"
CAPACITY = ("compute_gflops", "download_mbps", "upload_mbps")  # what a capacity trace may set per client
T = TypeVar("T")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _intervals(client: str, raw: Any) -> Intervals:
    """One client's checked intervals; a problem is a ``ValueError`` naming the client and the interval."""
    if not isinstance(raw, list):
        raise ValueError(f"client {client!r}: expected a list of [start_s, end_s], got {raw!r}")
    spans: list[tuple[float, float]] = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2 and all(_number(v) for v in pair)):
            raise ValueError(f"client {client!r} interval {i}: expected [start_s, end_s] of finite numbers, got "
                             f"{pair!r}")
        start, end = float(pair[0]), float(pair[1])
        if not 0 <= start < end:
            raise ValueError(f"client {client!r} interval {i}: needs 0 <= start_s < end_s, got {pair!r}")
        if spans and start < spans[-1][1]:
            raise ValueError(f"client {client!r} interval {i}: starts before interval {i - 1} ends (sort them, "
                             "without overlap)")
        spans.append((start, end))
    return tuple(spans)


def parse_availability(raw: Any) -> dict[int, Intervals]:
    """A trace's JSON value as online intervals by client id; a problem is a ``ValueError`` naming the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object of client id -> intervals, got {type(raw).__name__}")
    return {_client_id(client): _intervals(client, spans) for client, spans in raw.items()}


def _client_id(key: str) -> int:
    """A trace's key as a client id; anything but a plain non-negative integer is a ``ValueError`` naming it."""
    if not (key.isdigit() and key == str(int(key))):
        raise ValueError(f"key {key!r}: expected a client id (0, 1, ...)")
    return int(key)


def _load(path: str, key: str, parse: Callable[[Any], T]) -> T:
    """``parse`` of the JSON in ``path``; any problem is a one-line :class:`UserError` naming the file and ``key``."""
    try:
        raw = json.loads(Path(path).expanduser().read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror or exc}", key=key) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not JSON: {exc}", key=key) from None
    try:
        return parse(raw)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}", key=key) from None


def load_availability(path: str) -> dict[int, Intervals]:
    """The availability trace in ``path``; any problem is a one-line :class:`UserError` naming the file and key."""
    return _load(path, KEY, parse_availability)


def parse_capacity(raw: Any) -> dict[int, dict[str, float]]:
    """A capacity trace's JSON value: by client id, the figures of :data:`CAPACITY` it overrides (each > 0)."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object of client id -> figures, got {type(raw).__name__}")
    trace = {}
    for client, figures in raw.items():
        if not (isinstance(figures, dict) and figures and set(figures) <= set(CAPACITY)):
            raise ValueError(f"client {client!r}: expected an object of some of {', '.join(CAPACITY)}, got {figures!r}")
        for name, value in figures.items():
            if not (_number(value) and value > 0):
                raise ValueError(f"client {client!r} {name}: must be a finite number > 0, got {value!r}")
        trace[_client_id(client)] = {name: float(value) for name, value in figures.items()}
    return trace


def load_capacity(path: str) -> dict[int, dict[str, float]]:
    """The capacity trace in ``path``; any problem is a one-line :class:`UserError` naming the file and key."""
    return _load(path, CAPACITY_KEY, parse_capacity)


def capacity_from_fedscale(raw: Mapping[str, Any], reference_flops: float) -> dict[str, dict[str, float]]:
    """FedScale's device-capacity trace (as JSON) as fl-ee's.

    Each client of ``raw`` holds ``computation``, its inference latency in milliseconds per
    sample of FedScale's reference model, and ``communication``, its bandwidth in kbit/s (one
    figure for both directions, as FedScale uses it). ``reference_flops`` is that model's
    forward FLOPs per sample: ``compute_gflops = reference_flops / latency``.
    """
    out = {}
    for client, entry in raw.items():
        try:
            latency_ms, kbps = float(entry["computation"]), float(entry["communication"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"client {client!r}: needs computation and communication numbers ({exc})") from None
        if not (latency_ms > 0 and kbps > 0):
            raise ValueError(f"client {client!r}: computation and communication must be > 0")
        mbps = kbps / 1000
        out[str(client)] = {"compute_gflops": reference_flops / (latency_ms / 1000) / 1e9, "download_mbps": mbps,
                            "upload_mbps": mbps}
    return out


def online_until(spans: Intervals | None, t: float) -> float | None:
    """When a client online at ``t`` goes offline (``inf``: never); ``None`` when it is offline at ``t``.

    ``spans`` ``None``: the client is not in the trace, so always online.
    """
    if spans is None:
        return math.inf
    for start, end in spans:
        if start <= t < end:
            return end
    return None


def next_online(trace: Mapping[int, Intervals], clients: Sequence[int], t: float) -> float | None:
    """The earliest time ``>= t`` at which one of ``clients`` is online; ``None`` if none ever is again."""
    first = math.inf
    for client in clients:
        spans = trace.get(client)
        if online_until(spans, t) is not None:
            return t
        first = min([first, *(start for start, _ in spans or () if start > t)])
    return None if math.isinf(first) else first


def from_fedscale(raw: Mapping[str, Any], horizon_s: float) -> dict[str, list[list[float]]]:
    """FedScale's client-behaviour trace (as JSON) as fl-ee's, its spells repeated up to ``horizon_s``.

    Each client of ``raw`` holds ``active`` and ``inactive`` (the starts and ends of its
    online spells, seconds) and ``finish_time`` (the period they repeat with); client ids
    are kept. Spells that overlap after the wrap-around are merged.
    """
    out = {}
    for client, entry in raw.items():
        try:
            active, inactive, period = entry["active"], entry["inactive"], float(entry["finish_time"])
        except (TypeError, KeyError) as exc:
            raise ValueError(f"client {client!r}: needs active, inactive and finish_time ({exc})") from None
        if len(active) != len(inactive) or not period > 0:
            raise ValueError(f"client {client!r}: active and inactive differ in length, or finish_time <= 0")
        spans: list[list[float]] = []
        for k in range(math.ceil(horizon_s / period)):
            for start, end in zip(active, inactive):
                lo, hi = k * period + float(start), min(k * period + float(end), horizon_s)
                if lo >= hi:
                    continue
                if spans and lo <= spans[-1][1]:
                    spans[-1][1] = max(spans[-1][1], hi)
                else:
                    spans.append([lo, hi])
        out[str(client)] = spans
    return out
