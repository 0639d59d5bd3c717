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
- ``training_w`` / ``idle_w``: the whole device's power while it trains (all cores
  busy) and while it is awake but idle (waiting on its radio). Measured for the
  Raspberry Pi 4 (2.7 W idle, 6.4 W under ``stress`` on 4 cores; RasPi.TV's and The
  MagPi's measurements, 2019) and for the Apple M1 Mac mini at the wall (4.2 W idle,
  26.5 W in a multi-threaded Cinebench run; AnandTech, "The 2020 Mac Mini Unleashed",
  2020). The phones' figures are assumptions, the sustained CPU power envelope usually
  given for each SoC class (about 2 / 3.5 / 5 W under load, 0.5-0.8 W awake and idle),
  not measurements.
- ``radio_up_j_per_mb`` / ``radio_down_j_per_mb``: the radio's energy per megabyte
  beyond the idle power, from the linear power-throughput models of Huang et al.
  ("A Close Examination of Performance and Power Characteristics of 4G LTE Networks",
  MobiSys 2012, Table 3): 8 x alpha, alpha per Mbit/s. LTE: alpha_up 438.39 and
  alpha_down 51.97 mW per Mbit/s, so 3.51 and 0.42 J/MB, used for every phone (no 5G
  figure of the same kind is used) and for the IoT board's LTE-M link (an upper bound:
  Cat-M1 modems draw less). WiFi: 283.17 and 137.01 mW per Mbit/s, so 2.27 and 1.10
  J/MB, for the laptop.
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
    training_w: float
    idle_w: float
    radio_up_j_per_mb: float
    radio_down_j_per_mb: float


LTE = {"radio_up_j_per_mb": 3.51, "radio_down_j_per_mb": 0.42}  # Huang et al. 2012: 8 x alpha (W per Mbit/s)
WIFI = {"radio_up_j_per_mb": 2.27, "radio_down_j_per_mb": 1.10}


DEVICES: dict[str, DeviceProfile] = {
    # Raspberry Pi 4: 4x Cortex-A72 @ 1.5 GHz x 8 = 48 GFLOP/s peak; LTE-M (Cat-M1) link, ~1 Mbit/s.
    "iot-board": DeviceProfile(
        compute_gflops=4.8, download_mbps=1.0, upload_mbps=1.0, availability=0.9, failure_rate=0.05,
        training_w=6.4, idle_w=2.7, **LTE,
    ),
    # Snapdragon 450 class: 8x Cortex-A53 @ 1.8 GHz x 8 = 115 GFLOP/s peak; a slow 4G link.
    "budget-phone": DeviceProfile(
        compute_gflops=11.5, download_mbps=10.0, upload_mbps=3.0, availability=0.5, failure_rate=0.1,
        training_w=2.0, idle_w=0.5, **LTE,
    ),
    # Snapdragon 778G class: 4x A78 @ ~2.25 GHz x 16 + 4x A55 @ 1.9 GHz x 8 = 205 GFLOP/s; median mobile link.
    "mid-range-phone": DeviceProfile(
        compute_gflops=20.5, download_mbps=50.0, upload_mbps=10.0, availability=0.6, failure_rate=0.05,
        training_w=3.5, idle_w=0.6, **LTE,
    ),
    # Snapdragon 8 Gen 2 class: X3 @ 3.2 GHz x 32 + 4x A715 @ 2.8 GHz x 16 + 3x A510 @ 2.0 GHz x 8 = 329 GFLOP/s; 5G.
    "flagship-phone": DeviceProfile(
        compute_gflops=32.9, download_mbps=150.0, upload_mbps=25.0, availability=0.7, failure_rate=0.03,
        training_w=5.0, idle_w=0.8, **LTE,
    ),
    # Apple M1 class: 4 performance cores @ 3.2 GHz x 32 = 410 GFLOP/s (efficiency cores left out); median broadband.
    "laptop": DeviceProfile(
        compute_gflops=41.0, download_mbps=90.0, upload_mbps=40.0, availability=0.8, failure_rate=0.02,
        training_w=26.5, idle_w=4.2, **WIFI,
    ),
}
