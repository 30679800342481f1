"""Test and rehearsal kit, shipped like ``trio.testing``: ``netem`` (the link model),
``sim`` (a client and the real server operations on virtual time) and ``server``
(``serving``: a real server on a background thread, for synchronous code)."""
