"""FedPer: a shared body and personal heads.

Arivazhagan, Aggarwal, Singh and Choudhary, "Federated Learning with Personalization
Layers", arXiv:1912.00818, 2019. Each client trains base layers and personalisation
layers together; the server averages the base layers only, and each client keeps its
personalisation layers.

On an early-exit submodel: the body (base layers) is the backbone stages, shared and
aggregated over their holders; the head (personalisation layers) is every exit head of
the client's submodel, kept on the client as ``fedper/exits.*``. A training round lays
the kept heads over the received submodel, trains it end to end with the shared step
(the exits' loss and distillation as configured) and sends the stages alone; the global
exits, which nobody sends, keep their initial values, and a client's first round starts
its heads from them. Evaluation: the received backbone with the client's heads. No
hyper-parameters beyond the shared step's; the clock charges the shared step and the
stages' bytes.
"""

from __future__ import annotations

from fl_ee.learning.pfl.parts import HEAD, PartlyShared


class FedPer(PartlyShared):
    """fedper: shared backbone, personal exit heads (Arivazhagan et al. 2019)."""

    personal = HEAD
