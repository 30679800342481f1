"""The TCP protocol's sans-IO core: ``frames`` (bytes <-> events), ``events`` (one
record per message), ``connection`` (the two streams' transition tables)."""
