"""A run: the Flower ServerApp and ClientApp, the round loop, checkpoints, faults, preflight and resume.

Owns: ``server`` (the round loop and the ServerApp), ``client`` (the ClientApp),
``clientstate`` (a client's own state on disk), ``globaleval`` (the global model's
evaluation), ``checkpoint`` and ``resume``, ``faults`` (what every update and
aggregate must pass), ``preflight`` (every check before Ray starts), ``plan``
(``fl-ee check``'s plan from the cost model) and ``checkrecord`` (a check's outcome
recorded, so the next check of the same inputs needs neither torch nor Flower). May import every layer below it, up to
:mod:`fl_ee.results`; beside it sit the engine's modules :mod:`sims.backend`,
:mod:`sims.engine`, :mod:`sims.stopping` and :mod:`sims.reaper`.
"""
