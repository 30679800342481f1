"""udp core (sans-IO)."""
