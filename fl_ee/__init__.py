"""fl-ee: federated personalisation of early-exit networks across device tiers."""
