"""Device simulation: tiers, presets and the engine that runs Flower on Ray."""
