"""Frame codec: every event round-trips; bad bytes raise only RemoteProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftransfer.config import FRAME_HEADER_BYTES, MAX_CONTROL_BYTES, MAX_FRAME_BYTES
from ftransfer.errors import LocalProtocolError, RemoteProtocolError
from ftransfer.proto.tcp import events as ev
from ftransfer.proto.tcp.frames import (
    FrameType,
    decode_untrusted,
    encode,
    parse_header_untrusted,
    truncate_utf8,
)

DIGEST = bytes(range(16))
ENTRY = ev.Entry(name="dir/ü name", kind=ev.EntryKind.FILE, size=12, mtime_ns=-5, mode=0o755)

CONTROL_EVENTS: list[ev.Event] = [
    ev.HelloOffered(min_version=1, max_version=3),
    ev.HelloAccepted(version=1, max_frame_bytes=MAX_FRAME_BYTES, read_only=True),
    ev.PutRequested(
        path="a/b.bin", size=2**40, mtime_ns=1_700_000_000_123_456_789, mode=0o644, exclusive=True
    ),
    ev.FileEnded(digest=DIGEST),
    ev.FileAborted(),
    ev.PutCommitted(digest=DIGEST),
    ev.GetRequested(path="x"),
    ev.FileStarted(size=0, mtime_ns=-1, mode=0o644),
    ev.DownloadVerified(digest=DIGEST),
    ev.ListRequested(path=""),
    ev.Listed(
        entries=(
            ENTRY,
            ev.Entry(name="d", kind=ev.EntryKind.DIRECTORY, size=0, mtime_ns=1, mode=0o755),
        )
    ),
    ev.Listed(entries=()),
    ev.ListEnded(),
    ev.StatRequested(path="a"),
    ev.Stated(entry=ENTRY, digest=DIGEST),
    ev.RemoveRequested(path="a"),
    ev.MkdirRequested(path="a/b", parents=True),
    ev.MoveRequested(source="from/ä", target="to"),
    ev.MoveRequested(source="a", target="b", exclusive=True),
    ev.Done(),
    ev.PingRequested(seq=7, timestamp_ns=2**63 + 5),
    ev.Ponged(seq=2**32 - 1, timestamp_ns=0),
    ev.Failed(code=13, message="refused: .."),
    ev.PutRequested(
        path="big",
        size=3 << 23,
        mtime_ns=5,
        mode=0o600,
        exclusive=False,
        offset=1 << 23,
        transfer_id=bytes(range(16, 32)),
        first_digest=DIGEST,
    ),
    ev.PartialRequested(
        path="big", size=3 << 23, mtime_ns=-1, transfer_id=b"\x01" * 16, first_digest=DIGEST
    ),
    ev.PartialHeld(offset=2 << 23, prefix=DIGEST),
    ev.GetRequested(path="big", offset=1 << 23, size=3 << 23, mtime_ns=9, prefix=DIGEST),
    ev.FileStarted(size=3 << 23, mtime_ns=9, mode=0o644, offset=1 << 23),
    ev.FileStarted(size=3 << 23, mtime_ns=9, mode=0o644, offset=0),
]


@pytest.mark.parametrize(
    ("frame_type", "payload"),
    [
        (FrameType.PUT_AT, struct.pack(">QqBHQ16s16s", 10, 0, 0, 0o644, 11, b"\x01" * 16, DIGEST)),
        (FrameType.GET_AT, struct.pack(">QQq16s", 11, 10, 0, DIGEST) + b"x"),
        (FrameType.FILE_AT, struct.pack(">QqHQ", 10, 0, 0o644, 11)),
    ],
    ids=["PUT_AT", "GET_AT", "FILE_AT"],
)
def test_an_offset_beyond_the_size_is_a_protocol_error(
    frame_type: FrameType, payload: bytes
) -> None:
    with pytest.raises(RemoteProtocolError, match="beyond the size"):
        decode_untrusted(frame_type, payload)


@pytest.mark.parametrize(
    ("frame_type", "payload", "problem"),
    [
        (FrameType.PARTIAL, struct.pack(">Qq16s16s", 9, 0, bytes(16), DIGEST) + b"f", "zero"),
        (FrameType.PUT_AT, struct.pack(">QqBHQ16s16s", 9, 0, 0, 0, 0, bytes(16), DIGEST), "zero"),
        (FrameType.PARTIAL, struct.pack(">Qq16s16s", 9, -2, DIGEST, DIGEST) + b"f", "below -1"),
        (FrameType.GET_AT, struct.pack(">QQq16s", 0, 9, -2, DIGEST) + b"f", "below -1"),
    ],
    ids=["PARTIAL-zero-id", "PUT_AT-zero-id", "PARTIAL-mtime", "GET_AT-mtime"],
)
def test_resume_frames_refuse_a_zero_id_and_a_bad_mtime(
    frame_type: FrameType, payload: bytes, problem: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=problem):
        decode_untrusted(frame_type, payload)


def test_resumed_frames_declare_only_the_rest() -> None:
    """A PUT_AT (and a FILE_AT) is followed by the bytes after its offset only."""
    from ftransfer.proto.tcp.connection import Connection, Role

    client = Connection(Role.CLIENT)
    client.send(ev.HelloOffered(min_version=4, max_version=4))
    client.send(
        ev.PutRequested(
            path="f",
            size=100,
            mtime_ns=-1,
            mode=0o644,
            exclusive=False,
            offset=60,
            transfer_id=b"\x01" * 16,
            first_digest=DIGEST,
        )
    )
    client.send(ev.FileData(data=b"x" * 40))
    with pytest.raises(LocalProtocolError):
        client.send(ev.FileData(data=b"x"))


@pytest.mark.parametrize("event", CONTROL_EVENTS, ids=lambda e: type(e).__name__)
def test_control_events_round_trip(event: ev.Event) -> None:
    frame = encode(event)
    frame_type, length = parse_header_untrusted(frame)
    assert length == len(frame) - FRAME_HEADER_BYTES
    assert decode_untrusted(frame_type, frame[FRAME_HEADER_BYTES:]) == event


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        parse_header_untrusted(struct.pack(">BI", FrameType.DATA, 0xFFFFFFFF))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        parse_header_untrusted(struct.pack(">BI", FrameType.DATA, MAX_FRAME_BYTES + 1))
    assert parse_header_untrusted(struct.pack(">BI", FrameType.DATA, MAX_FRAME_BYTES))[1] == (
        MAX_FRAME_BYTES
    )


def test_control_frames_have_a_smaller_limit() -> None:
    with pytest.raises(RemoteProtocolError, match="control frame"):
        parse_header_untrusted(struct.pack(">BI", FrameType.GET, MAX_CONTROL_BYTES + 1))
    assert parse_header_untrusted(struct.pack(">BI", FrameType.GET, MAX_CONTROL_BYTES))


def test_unknown_type_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="unknown frame type 0x99"):
        parse_header_untrusted(struct.pack(">BI", 0x99, 0))


@pytest.mark.parametrize(
    ("frame_type", "payload", "message"),
    [
        (FrameType.HELLO, b"HTTP" + bytes(4), "magic"),
        (FrameType.HELLO, b"FTRN\x00\x02\x00\x01\x00", "wrong length"),
        (FrameType.PUT, b"\x00" * 18, "truncated"),
        (FrameType.PUT, bytes(19) + b"\xff\xfe", "UTF-8"),
        (FrameType.PUT, b"\xff" * 19 + b"a", "out of range"),
        (FrameType.END, bytes(15), "16-byte"),
        (FrameType.ABORT, b"x", "empty"),
        (FrameType.ENTRIES, bytes(20), "truncated"),
        (FrameType.ENTRIES, b"\x09" + bytes(18) + b"\x00\x00", "kind"),
        (FrameType.ENTRIES, b"\x01" + bytes(18) + b"\x00\x05ab", "name is truncated"),
        (FrameType.MOVE, b"\x00\x00\x09ab", "source is truncated"),
        (FrameType.MKDIR, b"", "truncated"),
        (FrameType.DATA, b"", "no control payload"),
        (FrameType.PING, bytes(11), "PING must be 12 bytes"),
        (FrameType.PONG, bytes(13), "PONG must be 12 bytes"),
    ],
)
def test_malformed_payloads_raise_remote_protocol_error(
    frame_type: FrameType, payload: bytes, message: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_untrusted(frame_type, payload)


def test_encoding_an_oversized_control_frame_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode(ev.GetRequested(path="a" * (MAX_CONTROL_BYTES + 1)))


def test_unencodable_name_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="UTF-8"):
        encode(ev.GetRequested(path="bad\udcff"))


@given(st.sampled_from(list(FrameType)), st.binary(max_size=300))
def test_decoder_raises_only_remote_protocol_error(frame_type: FrameType, payload: bytes) -> None:
    try:
        event = decode_untrusted(frame_type, payload)
    except RemoteProtocolError:
        return
    # Whatever parses re-encodes to a frame that parses to the same event.
    again = encode(event)
    assert decode_untrusted(frame_type, again[FRAME_HEADER_BYTES:]) == event


@given(st.binary(min_size=FRAME_HEADER_BYTES, max_size=FRAME_HEADER_BYTES))
def test_header_parser_raises_only_remote_protocol_error(raw: bytes) -> None:
    try:
        frame_type, length = parse_header_untrusted(raw)
    except RemoteProtocolError:
        return
    assert length <= (MAX_FRAME_BYTES if frame_type is FrameType.DATA else MAX_CONTROL_BYTES)


def test_an_empty_version_range_parses_so_that_the_server_can_answer_error_2() -> None:
    event = decode_untrusted(FrameType.HELLO, b"FTRN\x00\x02\x00\x01")
    assert event == ev.HelloOffered(min_version=2, max_version=1)


def test_error_messages_are_cut_on_a_character_boundary() -> None:
    frame = encode(ev.Failed(code=10, message="not found: " + "€" * 2000))
    payload = frame[FRAME_HEADER_BYTES + 2 :]
    assert len(payload) <= 1024
    assert payload.decode("utf-8").startswith("not found: €")  # valid UTF-8 to the end


def test_only_permission_bits_cross_the_wire() -> None:
    put = ev.PutRequested(path="x", size=1, mtime_ns=-1, mode=0o4755, exclusive=False)
    frame = encode(put)
    decoded = decode_untrusted(FrameType.PUT, frame[FRAME_HEADER_BYTES:])
    assert isinstance(decoded, ev.PutRequested) and decoded.mode == 0o755


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_truncation_keeps_the_longest_prefix_of_whole_characters(text: str, limit: int) -> None:
    data = text.encode("utf-8")
    cut = truncate_utf8(text, limit)
    assert data.startswith(cut) and len(cut) <= limit
    cut.decode("utf-8")  # strict: never half a character
    if len(data) > limit:
        assert len(cut) > limit - 4  # only the character that did not fit is dropped
    else:
        assert cut == data
