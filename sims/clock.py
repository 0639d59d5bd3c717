"""The virtual clock: each client's simulated round time, who shows up, and how a round ends.

Pure functions of numbers and seeds; nothing here waits. A client's round time is

    download (bytes of the shared tensors it receives / downlink)
  + compute  (its training FLOPs / compute_gflops)
  + upload   (bytes it returns / uplink)

with training FLOPs = 3 x forward FLOPs of its submodel with its exits x samples x
local epochs (forward + backward ~ 3 forwards, :func:`fl_ee.models.training_flops`); how
the training scheme and the client algorithm change the work and the bytes is
``sims.emulator.client_flops``. Its energy (:func:`energy`) is its device's training power
over the compute, its idle power over the transfers, and its radio's joules per MB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fl_ee.core.seeding import Stream, rng

OK, LATE, UNAVAILABLE, FAILED, REJECTED = "ok", "late", "unavailable", "failed", "rejected"
OUTCOMES = (OK, LATE, UNAVAILABLE, FAILED, REJECTED)  # rejected: refused by the server (federation/faults.py)


def transfer_seconds(num_bytes: float, mbps: float) -> float:
    """Seconds to move ``num_bytes`` over a ``mbps`` megabit-per-second link."""
    return num_bytes * 8 / (mbps * 1e6)


@dataclass(frozen=True)
class ClientTime:
    """A client's simulated seconds in one round, by phase, and the energy the whole round takes (:func:`energy`)."""

    download_s: float
    compute_s: float
    upload_s: float
    energy_j: float = 0.0

    @property
    def total_s(self) -> float:
        """The whole round: download + compute + upload."""
        return self.download_s + self.compute_s + self.upload_s


def client_time(
    down_bytes: float, up_bytes: float, flops: float, compute_gflops: float, download_mbps: float, upload_mbps: float
) -> ClientTime:
    """The cost model: download + compute + upload, in seconds."""
    return ClientTime(
        download_s=transfer_seconds(down_bytes, download_mbps),
        compute_s=flops / (compute_gflops * 1e9),
        upload_s=transfer_seconds(up_bytes, upload_mbps),
    )


@dataclass(frozen=True)
class Power:
    """A device's power figures (``sims/devices.py`` gives their sources)."""

    training_w: float
    idle_w: float
    radio_up_j_per_mb: float
    radio_down_j_per_mb: float


def energy(time: ClientTime, down_bytes: float, up_bytes: float, power: Power) -> float:
    """Joules of one client round.

    Training at ``training_w``, awake at ``idle_w`` while its radio moves the bytes, plus the
    radio's own energy per MB (10^6 bytes) each way.
    """
    return (power.training_w * time.compute_s + power.idle_w * (time.download_s + time.upload_s)
            + power.radio_down_j_per_mb * down_bytes / 1e6 + power.radio_up_j_per_mb * up_bytes / 1e6)


def speed_factors(sigmas: Sequence[float], seed: int) -> np.ndarray:
    """A fixed compute-speed factor per client: lognormal with median 1 and log-sd ``sigmas[i]``."""
    return np.exp(rng(seed, Stream.SPEED).normal(size=len(sigmas)) * np.asarray(sigmas, dtype=float))


@dataclass(frozen=True)
class Presence:
    """Whether a sampled client is online this round, and whether (and when) it drops out."""

    available: bool
    fails: bool
    fail_at: float  # fraction of its round time done when it drops (failed clients only)
    reason: str = ""  # why it is offline or drops, where a trace says so
    offline_s: float = math.inf  # when a trace takes it offline mid-round (its drop time on the virtual clock)


def presence(client_id: int, availability: float, failure_rate: float, seed: int, server_round: int) -> Presence:
    """Seeded draws for one client in one round, independent of who else was sampled."""
    u_online, u_fail, u_when = rng(seed, Stream.PRESENCE, server_round, client_id).random(3)
    available = bool(u_online < availability)
    fails = available and bool(u_fail < failure_rate)
    return Presence(available, fails, float(u_when) if fails else 0.0)


def settle(times: Mapping[int, float], policy: str, deadline_s: float, keep: int) -> tuple[dict[int, str], float]:
    """Which finished clients count (``ok``) or come too late (``late``), and the round's length.

    ``times`` holds the simulated completion time of every client that ran to the end.
    ``wait``: everyone counts; the slowest sets the round time. ``deadline``: replies
    after ``deadline_s`` are late; the round ends at the deadline or when the last
    reply arrives, whichever is first. ``overselect``: the first ``keep`` to finish
    count (ties by client id); the round ends with the last of them.
    """
    if not times:
        return {}, 0.0
    if policy == "wait":
        return {c: OK for c in times}, max(times.values())
    if policy == "deadline":
        return {c: OK if t <= deadline_s else LATE for c, t in times.items()}, min(deadline_s, max(times.values()))
    if policy == "overselect":
        order = sorted(times, key=lambda c: (times[c], c))
        kept = order[:keep]
        return {c: OK if c in kept else LATE for c in times}, max(times[c] for c in kept) if kept else 0.0
    raise ValueError(f"unknown straggler policy {policy!r}")
