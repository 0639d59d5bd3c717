"""What travels between the ServerApp and the ClientApp, and how it reaches Flower's nodes.

Owns: ``protocol`` (every record key and message payload, typed), ``exchange``
(virtual clients on a pool of simulated nodes), ``cohort`` (several clients in one
message) and ``arrays`` (tensors to and from Flower's arrays). May import
:mod:`fl_ee.core`, Flower, NumPy and torch (tensors, not models); nothing that trains or evaluates.
"""
