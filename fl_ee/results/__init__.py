"""What a run reports and where it is kept: the summary, observers, the run directory, reports, plots, statistics.

Owns: ``summary`` (``summary.json`` assembled in one place), ``observers`` (what the
round loop tells its followers, and the loop state they see), ``rundir`` (the run
directory, written and read here alone), ``progress`` and ``tensorboard`` (two more
observers), ``report``, ``fit``, ``plots`` (tables and plots from a run directory),
``stats``, ``groups`` and ``sweepplots`` (runs grouped by setting over seeds). May
import every layer below the federation: :mod:`fl_ee.core` up to :mod:`fl_ee.deployment`,
:mod:`strategies` and the virtual clock (:mod:`sims.clock`, :mod:`sims.emulator`).
"""
