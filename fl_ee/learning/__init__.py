"""What a client computes: client algorithms, local objectives and SGD, training schemes, personalisation.

Owns: ``algorithm`` (client algorithms, the client-side plug-in point), ``training``
(losses per exit, distillation, the local loop, evaluation forwards), ``schedule`` (each
round's learning rate, without torch), ``scheme`` (which
rounds train the backbone, which tensors return), ``personal`` (the shipped
personalisation modes), ``pfl`` (the personalised-FL baselines: FedPer, LG-FedAvg, FedRep,
FedBABU, Ditto, APFL), ``feddyn`` (FedDyn's client term), ``augment`` (train-time
augmentation) and ``device`` (CPU or GPU for a client). Knows nothing of Flower. May import
:mod:`fl_ee.core`, :mod:`fl_ee.models` and :mod:`fl_ee.data`.
"""
