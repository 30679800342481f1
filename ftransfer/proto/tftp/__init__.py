"""tftp core (sans-IO)."""
