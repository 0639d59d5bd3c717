"""Inference-time deployment of the exits: exit policies, calibration, thresholds and their figures.

Owns: ``policies`` (when a sample leaves), ``calibration`` (temperature scaling, ECE),
``thresholds`` (which point of a policy's curve to deploy) and ``deploy`` (every
policy's curves on a client, thresholds per scope, the summary's figures). May import
:mod:`fl_ee.core`, :mod:`fl_ee.models`, :mod:`fl_ee.data`, :mod:`fl_ee.learning` and
:mod:`fl_ee.wire` (the reply a client's figures travel in).
"""
