"""The vocabulary every layer shares: the run config, seed streams, errors, atomic files, the cache, pure metrics.

Owns: ``config`` (the validated run configuration), ``resumable`` (which keys a resume
may change), ``seeding``, ``errors`` (one-line errors and warnings), ``plugins``
(plug-ins found by name and built from their options), ``atomic``
(files replaced atomically, ``.npz`` without pickle), ``cache`` (the on-disk cache),
``layout`` (where a backbone's exits sit, torch-free) and ``metrics`` (pure summaries
of per-client results). May import nothing of fl-ee but :mod:`sims.devices` (device
profiles, plain data).
"""
