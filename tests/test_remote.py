"""REMOTE syntax and where transfers land locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftransfer.client import Remote, get_target, parse_remote
from ftransfer.config import DEFAULT_PORT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", Remote("host", DEFAULT_PORT, "")),
        ("host/", Remote("host", DEFAULT_PORT, "")),
        ("host:7000", Remote("host", 7000, "")),
        ("host:7000/a/b", Remote("host", 7000, "a/b")),
        ("host:/a", Remote("host", DEFAULT_PORT, "a")),
        ("host/a/b/", Remote("host", DEFAULT_PORT, "a/b/")),
        ("10.0.0.1:1/x", Remote("10.0.0.1", 1, "x")),
        ("[::1]:9/x", Remote("::1", 9, "x")),
        ("[fe80::1%eth0]/x", Remote("fe80::1%eth0", DEFAULT_PORT, "x")),
        ("host//etc", Remote("host", DEFAULT_PORT, "/etc")),  # the server refuses it
    ],
)
def test_parse_remote(text: str, expected: Remote) -> None:
    assert parse_remote(text) == expected


@pytest.mark.parametrize(
    "text", ["", ":80/x", "[::1", "host:0", "host:65536", "host:x/y", "[::1]x", "host:12ab"]
)
def test_malformed_remote(text: str) -> None:
    with pytest.raises(ValueError):
        parse_remote(text)


def test_get_target(tmp_path: Path) -> None:
    assert get_target("a/b.txt", None) == Path("b.txt")
    assert get_target("a/b.txt", "-") is None
    assert get_target("a/b.txt", str(tmp_path)) == tmp_path / "b.txt"
    assert get_target("a/b.txt", "new/") == Path("new/b.txt")
    assert get_target("a/b.txt", "c.txt") == Path("c.txt")
