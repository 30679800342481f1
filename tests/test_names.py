"""Names: every name row of docs/threats.md, refused by the one parser of peer names."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    "a\x9b31mred",  # C1 CSI: a terminal escape without ESC
    "nel\x85",
    "evil\u202etxt.exe",  # RIGHT-TO-LEFT OVERRIDE: shows as "evilexe.txt"
    "iso\u2066late",
    "zero\u200bwidth",
    "\ufeffbom",
    "tag\U000e0041",
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
    assert escape("a\x9b31mred") == "a\\x9b31mred"
    assert escape("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert escape("ü\x1b\U000e0041") == "ü\\x1b\\U000e0041"
    assert escape("日本語 ü") == "日本語 ü"  # printable text is left alone


def test_the_reason_says_which_kind_of_character_was_refused() -> None:
    with pytest.raises(PathRefused, match="control characters are not allowed"):
        parse_name("ü\x9b")
    with pytest.raises(PathRefused, match="format characters are not allowed"):
        parse_name("ü\u202e")


UNSAFE = ("Cc", "Cf", "Cs")
"""What must never reach a terminal or a log raw: controls, format characters
(bidi, zero-width) and lone surrogates (undecodable bytes from a disk)."""
NAME_TEXT = st.text(
    st.one_of(
        st.sampled_from("/.\\:ab\x00\x1b\x7f\x9b\u202e\u200b\udcff"),
        st.characters(exclude_categories=()),
    ),
    max_size=40,
)


@given(NAME_TEXT)
def test_escape_leaves_nothing_unsafe_and_keeps_the_rest(text: str) -> None:
    shown_text = escape(text)
    assert not any(unicodedata.category(char) in UNSAFE for char in shown_text)
    if not any(unicodedata.category(char) in UNSAFE for char in text):
        assert shown_text == text


@given(NAME_TEXT)
def test_what_is_accepted_prints_as_it_is(text: str) -> None:
    """Every name the parser accepts is shown unchanged: nothing it lets through
    needs escaping, so no accepted name can drive a terminal."""
    try:
        name = parse_name(text, allow_root=True)
    except PathRefused:
        return
    assert not any(unicodedata.category(char) in UNSAFE for char in name.text)
    assert escape(name.text) == name.text
    assert all(is_valid_component(part) for part in name.parts)


def test_long_names_are_cut_in_the_middle_for_messages() -> None:
    long = "a" * 3000 + "END"
    text = shown(long)
    assert len(text) <= MAX_SHOWN_CHARS + 3 and text.endswith("END") and "..." in text
    with pytest.raises(PathRefused) as refused:
        parse_name("/".join(["€" * 80] * 12) + "/x\x01")
    assert str(refused.value).endswith("control characters are not allowed")  # reason kept
