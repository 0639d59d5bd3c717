"""What travels between the ServerApp and the ClientApp, and how it reaches Flower's nodes.

Owns: ``protocol`` (every record key and message payload, typed) and ``exchange``
(virtual clients on a pool of simulated nodes). May import :mod:`fl_ee.core` and
Flower; nothing that trains or evaluates.
"""
