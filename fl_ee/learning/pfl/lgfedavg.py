"""LG-FedAvg: personal bodies, a shared head.

Liang, Liu, Ziyin, Allen, Auerbach, Brent, Salakhutdinov and Morency, "Think Locally, Act
Globally: Federated Learning with Local and Global Representations", arXiv:2001.01523,
2020. Each client learns its own local representation (the lower layers) and the server
averages only the global layers on top of it.

On an early-exit submodel: the body (local representation) is the client's backbone
stages, kept on the client as ``lg-fedavg/stages.*``; the head (global layers) is every
exit head of its submodel, shared and aggregated over their holders. A training round
lays the kept stages over the received submodel, trains it end to end with the shared
step and sends the exits alone; the global stages, which nobody sends, keep their
initial values, and a client's first round starts its stages from them (the paper
starts from a jointly trained model: set ``model.weights`` for that). Evaluation: the
client's own stages under the received exits. No hyper-parameters beyond the shared
step's; the clock charges the shared step and the exits' bytes.
"""

from __future__ import annotations

from fl_ee.learning.pfl.parts import BODY, PartlyShared


class LGFedAvg(PartlyShared):
    """lg-fedavg: personal backbone stages, shared exit heads (Liang et al. 2020)."""

    namespace = "lg-fedavg"
    personal = BODY
