"""Personalised-FL baselines as client algorithms (``personalisation.mode``), one paper a module.

``fedper`` (:mod:`.fedper`), ``lg-fedavg`` (:mod:`.lgfedavg`), ``fedrep`` (:mod:`.fedrep`),
``fedbabu`` (:mod:`.fedbabu`), ``ditto`` (:mod:`.ditto`) and ``apfl`` (:mod:`.apfl`). The
papers split a network into a *body* (the feature extractor) and a *head* (its
classifier); on an early-exit submodel the body is its backbone stages (``stages.*``)
and the head every one of its exit heads (``exits.*``), each a classifier as the papers'
single head is (:mod:`.parts`). Their hyper-parameters are ``personalisation.options``
with the papers' values as defaults; ``personalisation.epochs`` is not theirs. All of
them train the backbone in every round, so none combines with ``training.scheme = ic-only``.
Server-side terms see the model as received: under ``strategy.name = "feddyn"`` the
client term anchors a kept part (FedPer's heads) at the global one, and q-FFL's initial
loss is that of the received model.
"""
