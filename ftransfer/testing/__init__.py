"""Test and rehearsal kit, shipped like ``trio.testing``: ``netem`` (the link model)
and ``sim`` (a client and the real server operations on virtual time)."""
