"""Datasets as in-memory tensors and each client's split of them.

Owns: ``datasets`` (decoding, the cache of decoded tensors, client splits, calibration
splits). May import :mod:`fl_ee.core`, :mod:`fl_ee.models` (a dataset's input shape
fixes the model's) and :mod:`partitions` (the non-IID splits).
"""
