"""Many runs as one study: sweeps over a grid of settings and seeds.

Owns: ``sweep`` (every combination of grid values times every seed, each an ordinary
run directory). May import every layer below; only :mod:`fl_ee.cli` sits above.
"""
