"""Device profiles for tiers: sustained training throughput, link speeds, availability.

A tier names one with ``preset = "budget-phone"`` and may override any field. How
each figure is derived (README, "Device presets", gives the sources):

- ``compute_gflops``: the CPU's fp32 peak from vendor figures (cores x clock x FLOPs
  per cycle: 8 for a 128-bit NEON FMA pipe, 16 for two, 32 for four) times an
  assumed 10% sustained utilisation for small-batch training.
- ``download_mbps`` / ``upload_mbps``: the link the device class typically has
  (LTE-M for the IoT board; Ookla Speedtest Global Index medians for phones and
  fixed broadband, scaled down for budget and up for flagship devices).
- ``availability`` / ``failure_rate``: assumptions in the range FedScale's device
  availability traces show (phones online a minority to a majority of the time;
  always-powered boards and laptops more often), not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceProfile:
    """How fast and how reliable one class of device is."""

    compute_gflops: float
    download_mbps: float
    upload_mbps: float
    availability: float
    failure_rate: float


DEVICES: dict[str, DeviceProfile] = {
    # Raspberry Pi 4: 4x Cortex-A72 @ 1.5 GHz x 8 = 48 GFLOP/s peak; LTE-M (Cat-M1) link, ~1 Mbit/s.
    "iot-board": DeviceProfile(
        compute_gflops=4.8, download_mbps=1.0, upload_mbps=1.0, availability=0.9, failure_rate=0.05
    ),
    # Snapdragon 450 class: 8x Cortex-A53 @ 1.8 GHz x 8 = 115 GFLOP/s peak; a slow 4G link.
    "budget-phone": DeviceProfile(
        compute_gflops=11.5, download_mbps=10.0, upload_mbps=3.0, availability=0.5, failure_rate=0.1
    ),
    # Snapdragon 778G class: 4x A78 @ ~2.25 GHz x 16 + 4x A55 @ 1.9 GHz x 8 = 205 GFLOP/s; median mobile link.
    "mid-range-phone": DeviceProfile(
        compute_gflops=20.5, download_mbps=50.0, upload_mbps=10.0, availability=0.6, failure_rate=0.05
    ),
    # Snapdragon 8 Gen 2 class: X3 @ 3.2 GHz x 32 + 4x A715 @ 2.8 GHz x 16 + 3x A510 @ 2.0 GHz x 8 = 329 GFLOP/s; 5G.
    "flagship-phone": DeviceProfile(
        compute_gflops=32.9, download_mbps=150.0, upload_mbps=25.0, availability=0.7, failure_rate=0.03
    ),
    # Apple M1 class: 4 performance cores @ 3.2 GHz x 32 = 410 GFLOP/s (efficiency cores left out); median broadband.
    "laptop": DeviceProfile(
        compute_gflops=41.0, download_mbps=90.0, upload_mbps=40.0, availability=0.8, failure_rate=0.02
    ),
}
