"""client/auto.py's rule, on the probe's figures (no sockets)."""

from __future__ import annotations

from ftransfer.client.auto import LONG_PATH_MS, PROBE_ECHOES, decide


def test_no_echo_means_tcp() -> None:
    choice = decide([], PROBE_ECHOES)
    assert choice.transport == "tcp" and "blocked or filtered" in choice.reason
    assert choice.rtt_ms is None and choice.lost == PROBE_ECHOES


def test_a_lost_echo_means_udp_whatever_the_round_trip() -> None:
    choice = decide([0.2] * (PROBE_ECHOES - 1), PROBE_ECHOES)
    assert choice.transport == "udp" and "1 of 10 echoes lost: a lossy path" in choice.reason


def test_a_long_path_means_udp_and_a_short_clean_one_tcp() -> None:
    long = decide([LONG_PATH_MS + 30] * PROBE_ECHOES, PROBE_ECHOES)
    assert long.transport == "udp" and "a long path" in long.reason
    short = decide([0.3, 0.4, 5.0] + [0.3] * (PROBE_ECHOES - 3), PROBE_ECHOES)
    assert short.transport == "tcp" and "short, clean" in short.reason
    assert short.rtt_ms == 0.3  # the median: one slow echo does not make a path long
    assert short.record()["echoes_lost"] == 0
