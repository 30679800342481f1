"""Thin asyncio adapters around the sans-IO core."""
