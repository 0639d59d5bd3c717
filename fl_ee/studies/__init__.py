"""Many runs as one study: sweeps over a grid of settings and seeds, and published tables reproduced.

Owns: ``sweep`` (every combination of grid values times every seed, each an ordinary
run directory), ``recipes`` (a published table as data: settings, figures, claims) and
``reproduce`` (a recipe's runs as a sweep, its figures beside the paper's, a verdict per
claim). May import every layer below; only :mod:`fl_ee.api` and :mod:`fl_ee.cli` sit above.
"""
