"""Names: every name row of docs/threats.md, refused by the one parser of peer names."""

from __future__ import annotations

import pytest

from ftransfer.config import TEMP_PREFIX
from ftransfer.errors import PathRefused
from ftransfer.storage.names import (
    MAX_SHOWN_CHARS,
    Name,
    escape,
    is_valid_component,
    parse_name,
    shown,
)

BAD_NAMES = [
    "",
    ".",
    "..",
    "/",
    "../outside.txt",
    "sub/../../outside.txt",
    "sub/..",
    "./old.txt",
    "/etc/passwd",
    "//etc/passwd",
    "sub//inner.txt",
    "sub//",
    "..\\outside.txt",
    "sub\\inner.txt",
    "C:",
    "c:/windows",
    "x/C:y",
    "1:x",
    "a\x00b",
    "a\nb",
    "esc\x1b[31m",
    "del\x7f",
    "x" * 256,
    "a/" * 2100 + "a",
    TEMP_PREFIX + "abc",
    "sub/" + TEMP_PREFIX + "abc",
    "../root2/secret",
    "bad\udcffname",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(PathRefused):
        parse_name(name)


def test_good_names_split_into_components() -> None:
    assert parse_name("a/b c/ü.txt").parts == ("a", "b c", "ü.txt")
    assert parse_name("...").parts == ("...",)
    assert parse_name("x" * 255).parts == ("x" * 255,)
    assert parse_name("10:30.log").parts == ("10:30.log",)  # a colon later is fine
    assert parse_name("", allow_root=True) == Name(parts=(), directory=True)


def test_a_trailing_slash_means_a_directory() -> None:
    name = parse_name("dir/sub/")
    assert name.parts == ("dir", "sub") and name.directory
    assert not parse_name("dir/sub").directory
    with pytest.raises(PathRefused):
        parse_name("/", allow_root=True)  # the root is the empty name


def test_what_a_listing_may_show_is_what_a_request_may_name() -> None:
    for part in ("a", "ü", "10:30", "...", "x" * 255):
        assert is_valid_component(part) and parse_name(part).parts == (part,)
    for part in ("a\\b", "a\x01", TEMP_PREFIX + "x", "bad\udcff", "C:x", "x" * 256, ".."):
        assert not is_valid_component(part)
        with pytest.raises(PathRefused):
            parse_name(part)


def test_escape_shows_control_characters_and_undecodable_bytes() -> None:
    assert escape("plain name") == "plain name"
    assert escape("a\x1b[31mb\n") == "a\\x1b[31mb\\x0a"
    assert escape("bad\udcffname") == "bad\\xffname"
    assert escape("ümlaut") == "ümlaut"


def test_long_names_are_cut_in_the_middle_for_messages() -> None:
    long = "a" * 3000 + "END"
    text = shown(long)
    assert len(text) <= MAX_SHOWN_CHARS + 3 and text.endswith("END") and "..." in text
    with pytest.raises(PathRefused) as refused:
        parse_name("/".join(["€" * 80] * 12) + "/x\x01")
    assert str(refused.value).endswith("control characters are not allowed")  # reason kept
