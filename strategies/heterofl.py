"""HeteroFL: width-scaled submodels, every parameter element averaged over the clients that hold it.

Diao et al., ICLR 2021, "HeteroFL: Computation and Communication Efficient Federated
Learning for Heterogeneous Clients" (Flower baseline ``baselines/heterofl``). A tier of width
ratio ``r`` (``tiers.N.width``) trains the first ``ceil(r x c)`` channels of every layer it
holds (:mod:`fl_ee.models.width`), and each element of the global model becomes the average
of the clients whose slice holds it (:func:`strategies.aggregation.region_aggregate`),
unweighted as in the paper's code (``weighted=true``: by example count). Its network:

* **static batch norm** (``static_bn``, default true): with ``model.norm = "batch"``, batch
  norm keeps no running statistics and normalises every batch, in training and in
  evaluation, by its own (``static-batch``, :class:`fl_ee.models.norm.StaticBatchNorm`);
* **the scaler** (``scaler``, default true): every backbone convolution of a width-``r``
  submodel divides its output by ``r`` in training.

Tiers may differ in depth too; each tensor is then held by the tiers deep enough for it.
Left out: the masking of the classifier to a client's own labels, and the query of the
clients' batch statistics after training that the paper evaluates with.
"""

from __future__ import annotations

import dataclasses

from fl_ee.models import ModelSpec
from strategies.base import check_option
from strategies.depthfl import DepthFL


class HeteroFL(DepthFL):
    """HeteroFL: static width slices averaged element by element; static batch norm and the scaler."""

    def __init__(self, *, weighted: bool = False, static_bn: bool = True, scaler: bool = True, **kwargs) -> None:
        super().__init__(weighted=weighted, **kwargs)
        check_option(isinstance(static_bn, bool), "static_bn", f"expected true or false, got {static_bn!r}")
        check_option(isinstance(scaler, bool), "scaler", f"expected true or false, got {scaler!r}")
        self.static_bn, self.scaler = static_bn, scaler

    def model_spec(self, spec: ModelSpec) -> ModelSpec:
        """The config's network with static batch norm (in place of ``batch``) and the scaler, as configured."""
        norm = "static-batch" if self.static_bn and spec.norm == "batch" else spec.norm
        return dataclasses.replace(spec, norm=norm, scaler=self.scaler)
