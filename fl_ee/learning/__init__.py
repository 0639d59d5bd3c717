"""What a client computes: local objectives and SGD, training schemes, personalisation, augmentation.

Owns: ``training`` (losses per exit, distillation, the local loop, evaluation
forwards), ``scheme`` (which rounds train the backbone, which tensors return),
``personal`` (personalisation modes), ``augment`` (train-time augmentation) and
``device`` (CPU or GPU for a client). Knows nothing of Flower. May import
:mod:`fl_ee.core`, :mod:`fl_ee.models` and :mod:`fl_ee.data`.
"""
