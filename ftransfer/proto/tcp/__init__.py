"""tcp core (sans-IO)."""
