"""Transfer logs at the unit level: the records Operations makes, their three
forms (text, JSON, syslog) checked with a strict RFC 5424 parser, the syslog
handler on real sockets, and secrets and control characters kept out.

The server as a subprocess against a real rsyslogd is test_syslog.py.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfc5424

from ftransfer.checksum import digest_bytes, hex_digest
from ftransfer.errors import NotFound, PathRefused, StorageIOError, UsageError
from ftransfer.io.syslog import DEV_LOG, SyslogHandler, Target, parse_target
from ftransfer.server.logs import (
    JsonFormatter,
    LocalFormatter,
    RequestRecord,
    Rfc5424Formatter,
    rfc3339,
)
from ftransfer.server.operations import Operations, Policy, Principal, Requester
from ftransfer.server.users import Authenticator, Permissions, User, hash_password
from ftransfer.storage.memory import MemoryStore

WHO = Requester(
    peer="192.0.2.7:4000",
    transport="tcp",
    principal=Principal(user="alice", write=True, delete=True),
)
PASSWORD = "correct-horse-SECRET-1"
WRONG = "wrong-battery-SECRET-2"
HASH = hash_password(PASSWORD, log_n=10)
HOSTILE = "a\x01b\x1b[31mred\u202eevil\x7f.txt"
"""A name with C0, an ANSI escape, a bidi override and DEL: none may reach a log raw."""
RAW_CONTROLS = ("\x01", "\x1b", "\u202e", "\x7f")


class Captured(logging.Handler):
    """The log records of the server's logger, as emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def requests(self) -> list[RequestRecord]:
        return [r.msg for r in self.records if isinstance(r.msg, RequestRecord)]


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    log = logging.getLogger("ftransfer.server")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def operations(*, users: bool = False) -> tuple[Operations, MemoryStore]:
    store = MemoryStore()
    store.put_file("old.txt", b"old content")
    table = {
        "alice": User(
            name="alice", password_hash=HASH, root="", permissions=Permissions.parse("rwd")
        )
    }
    auth = Authenticator(table, failure_delay_s=0.0) if users else None
    return Operations(store, Policy(anonymous_write=True), users=auth), store


def record(**changes: object) -> RequestRecord:
    fields: dict[str, object] = {
        "time": 1714557600.123456,
        "peer": "192.0.2.7:4000",
        "user": "alice",
        "transport": "udp",
        "operation": "put",
        "path": "a/b.bin",
        "bytes": 1_048_576,
        "seconds": 0.125,
        "digest": "00" * 16,
    }
    fields.update(changes)
    return RequestRecord(**fields)  # type: ignore[arg-type]


def log_record(message: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("ftransfer.server", level, __file__, 1, message, None, None)


# ---- the records Operations makes --------------------------------------------------


def test_an_upload_is_one_record_with_bytes_seconds_rate_and_digest(captured: Captured) -> None:
    ops, _store = operations()
    data = b"12345"
    with ops.upload(WHO, "new.bin", size=len(data)) as up:
        up.write(data)
        up.commit(digest_bytes(data))
    [rec] = captured.requests()
    assert (rec.peer, rec.user, rec.transport, rec.operation) == (
        "192.0.2.7:4000",
        "alice",
        "tcp",
        "put",
    )
    assert (rec.path, rec.bytes, rec.result, rec.code, rec.reason) == ("new.bin", 5, "ok", None, "")
    assert rec.digest == hex_digest(digest_bytes(data))
    assert rec.seconds >= 0 and (rec.rate is None or rec.rate > 0)
    assert abs(rec.time - datetime.datetime.now().timestamp()) < 3600  # the wall clock


def test_a_download_records_the_digest_it_sent(captured: Captured) -> None:
    ops, _store = operations()
    with ops.download(WHO, "old.txt") as download:
        download.sent(digest_bytes(b"old content"))
    [rec] = captured.requests()
    assert (rec.operation, rec.bytes, rec.result) == ("get", 11, "ok")
    assert rec.digest == hex_digest(digest_bytes(b"old content"))


def test_refusals_failures_and_aborts_have_their_result_code_and_reason(
    captured: Captured,
) -> None:
    ops, _store = operations()
    with pytest.raises(NotFound):
        ops.download(WHO, "missing")
    with ops.upload(WHO, "f", size=10) as up:
        up.write(b"abc")
        up.fail(StorageIOError("disk on fire"))
    with ops.upload(WHO, "g", size=10) as up:
        up.write(b"ab")
    refused, failed, aborted = captured.requests()
    assert (refused.result, refused.code, refused.bytes) == ("refused", NotFound.code, None)
    assert refused.reason.startswith("missing")
    assert (failed.result, failed.code, failed.bytes) == ("failed", 40, 3)
    assert failed.reason == "disk on fire"
    assert (aborted.result, aborted.code, aborted.bytes) == ("aborted", None, 2)
    assert aborted.reason == "ended without a commit"
    levels = [r.levelno for r in captured.records if isinstance(r.msg, RequestRecord)]
    assert levels == [logging.INFO, logging.WARNING, logging.INFO]


def test_the_other_requests_have_their_path_target_and_entries(captured: Captured) -> None:
    ops, _store = operations()
    list(ops.listing(WHO, ""))
    ops.mkdir(WHO, "d/e", parents=True)
    ops.move(WHO, "old.txt", "d/new.txt", exclusive=False)
    ops.stat(WHO, "d/new.txt")
    ops.remove(WHO, "d/new.txt")
    recs = captured.requests()
    assert [(r.operation, r.path, r.target) for r in recs] == [
        ("ls", "/", None),
        ("mkdir", "d/e", None),
        ("mv", "old.txt", "d/new.txt"),
        ("stat", "d/new.txt", None),
        ("rm", "d/new.txt", None),
    ]
    assert recs[0].entries == 1 and all(r.result == "ok" for r in recs)


def test_logins_and_tickets_are_records_without_their_secrets(captured: Captured) -> None:
    ops, _store = operations(users=True)
    anonymous = Requester(peer="192.0.2.7:4000", transport="tcp", principal=ops.anonymous)
    assert ops.login(anonymous, "192.0.2.7", "alice", WRONG, 0.0).user is None
    verdict = ops.login(anonymous, "192.0.2.7", "alice", PASSWORD, 0.0)
    who = Requester(peer=anonymous.peer, transport="tcp", principal=ops.principal_of(verdict))
    secret = os.urandom(32)
    assert ops.ticket(who, lambda: secret) == secret
    failed, ok, ticket = captured.requests()
    assert (failed.operation, failed.user, failed.result, failed.code) == (
        "login",
        "alice",
        "refused",
        44,
    )
    assert failed.reason == "wrong password" and failed.path is None
    assert (ok.operation, ok.result, ticket.operation, ticket.result) == (
        "login",
        "ok",
        "ticket",
        "ok",
    )
    assert captured.records[2].levelno == logging.DEBUG  # its UDP request is logged
    written = "\n".join(every_form(r) for r in captured.records)
    for secret_text in (PASSWORD, WRONG, HASH, secret.hex(), repr(secret)):
        assert secret_text not in written
    assert HASH.split("$")[-1] not in written


def every_form(rec: logging.LogRecord) -> str:
    """The message as each formatter writes it."""
    forms = [
        logging.Formatter("%(message)s").format(rec),
        JsonFormatter().format(rec),
        Rfc5424Formatter(facility=3, hostname="h").format(rec),
        LocalFormatter(facility=3).format(rec),
    ]
    return "\n".join(forms)


def test_names_and_reasons_keep_control_characters_escaped(captured: Captured) -> None:
    ops, _store = operations(users=True)
    anonymous = Requester(peer="192.0.2.7:4000", transport="tcp", principal=ops.anonymous)
    ops.login(anonymous, "192.0.2.7", HOSTILE, WRONG, 0.0)  # an unknown user's name
    ops2, _ = operations()
    with ops2.upload(WHO, "x", size=1) as up:
        up.abort(f"the client said {HOSTILE}")
    with pytest.raises(PathRefused):
        ops2.move(WHO, HOSTILE, "y", exclusive=False)
    assert len(captured.requests()) == 3
    for rec in captured.records:
        written = every_form(rec)
        decoded = json.loads(JsonFormatter().format(rec))
        for char in RAW_CONTROLS:
            assert char not in written, (char, written)
            assert not any(char in str(value) for value in decoded.values())
    texts = [str(r) for r in captured.requests()]
    assert "\\x01" in texts[0] and "\\x1b" in texts[1] and "\\u202e" in texts[2], texts


# ---- the text and the JSON -----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        (
            {},
            "alice@192.0.2.7:4000 udp put a/b.bin: 1048576 bytes in 0.125 s (8.4 MB/s), "
            "digest " + "00" * 16,
        ),
        (
            {"user": "", "digest": None, "seconds": 0.0},
            "192.0.2.7:4000 udp put a/b.bin: 1048576 bytes in 0.000 s",
        ),
        (
            {"result": "refused", "code": 11, "reason": "a/b.bin: exists", "bytes": None},
            "alice@192.0.2.7:4000 udp put a/b.bin: refused: a/b.bin: exists",
        ),
        (
            {"operation": "ls", "path": "/", "bytes": None, "entries": 3},
            "alice@192.0.2.7:4000 udp ls /: 3 entries",
        ),
        (
            {"operation": "mv", "target": "c", "bytes": None, "digest": None},
            "alice@192.0.2.7:4000 udp mv a/b.bin -> c: ok",
        ),
        (
            {"operation": "login", "path": None, "bytes": None, "digest": None},
            "alice@192.0.2.7:4000 udp login: ok",
        ),
    ],
)
def test_the_text_is_one_readable_line(changes: dict[str, object], text: str) -> None:
    assert str(record(**changes)) == text


def test_json_has_every_field_for_a_record_and_the_message_otherwise() -> None:
    line = JsonFormatter().format(log_record(record()))
    assert "\n" not in line
    fields = json.loads(line)
    assert list(fields) == [
        "time", "level", "peer", "user", "transport", "operation", "path", "target", "bytes",
        "entries", "seconds", "rate", "digest", "result", "code", "reason",
    ]  # fmt: skip
    assert fields["level"] == "info" and fields["bytes"] == 1_048_576
    assert fields["rate"] == 8_388_608 and fields["seconds"] == 0.125
    stamp = datetime.datetime.fromisoformat(fields["time"])
    assert stamp.tzinfo is not None and stamp.timestamp() == pytest.approx(1714557600.123456)
    try:
        raise ValueError("boom")
    except ValueError:
        plain = log_record("started %s")
        plain.args, plain.exc_info = ("here",), sys.exc_info()
    other = json.loads(JsonFormatter().format(plain))
    assert other["message"] == "started here" and other["logger"] == "ftransfer.server"
    assert "ValueError: boom" in other["exception"]


def test_rfc3339_has_the_offset_and_microseconds() -> None:
    text = rfc3339(1714557600.5)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.500000([+-]\d\d:\d\d)", text), text


# ---- syslog: RFC 5424 for a receiver, syslog(3)'s header for the local socket --------


def test_a_record_is_a_strict_rfc5424_message_with_its_json_as_msg() -> None:
    formatter = Rfc5424Formatter(facility=16, hostname="files.example", pid=4242)
    message = rfc5424.parse(formatter.format(log_record(record())).encode())
    assert (message.facility, message.severity) == (16, 6)
    assert (message.hostname, message.app_name, message.procid, message.msgid) == (
        "files.example",
        "ftransfer",
        "4242",
        "put",
    )
    assert message.structured_data == [] and not message.utf8
    assert message.timestamp is not None
    assert message.timestamp.timestamp() == pytest.approx(1714557600.123456)
    assert message.msg.startswith(b"@cee: ") and message.msg.isascii()
    assert json.loads(message.msg[6:]) == record().fields()


@pytest.mark.parametrize(
    ("level", "severity"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (55, 2)],
)
def test_levels_are_severities_and_other_messages_are_their_text(level: int, severity: int) -> None:
    formatter = Rfc5424Formatter(facility=3, hostname="my host\x00", pid=1)
    message = rfc5424.parse(formatter.format(log_record("ünïcode\nstopped", level)).encode())
    assert (message.facility, message.severity, message.msgid) == (3, severity, "-")
    assert message.hostname == "myhost"  # header fields: printable ASCII, no spaces
    assert message.utf8 and message.msg.decode() == "ünïcode stopped"


def test_long_or_odd_header_fields_are_cut_to_the_rules() -> None:
    formatter = Rfc5424Formatter(facility=23, hostname="h" * 300, pid=1)
    message = rfc5424.parse(formatter.format(log_record(record(operation="x y" * 20))).encode())
    assert len(message.hostname) == 255 and message.msgid == ("xy" * 20)[:32]


def test_the_local_socket_gets_syslog3s_header() -> None:
    text = LocalFormatter(facility=3, pid=4242).format(log_record(record(), logging.WARNING))
    match = re.fullmatch(
        r"<28>(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d "
        r"ftransfer\[4242\]: @cee: (\{.*\})",
        text,
    )
    assert match, text
    assert json.loads(match.group(2)) == record().fields()


@pytest.mark.parametrize(
    "bad",
    [
        b"<192>1 - h a p m -",
        b"<013>1 - h a p m -",
        b"<13>2 - h a p m -",
        b"<13>1 2024-05-01t12:00:00Z h a p m -",
        b"<13>1 2024-05-01T12:00:00.1234567Z h a p m -",
        b"<13>1 2024-05-01T12:00:00 h a p m -",
        b"<13>1 2024-02-30T12:00:00Z h a p m -",
        b"<13>1 - h a p " + b"m" * 33 + b" -",
        b'<13>1 - h a p m [id a="x]"]',
        b"<13>1 - h a p m -x",
        b"<13>1 - h a p m - \xef\xbb\xbf\xff",
    ],
)
def test_the_test_parser_is_strict(bad: bytes) -> None:
    with pytest.raises(ValueError):
        rfc5424.parse(bad)


def test_the_test_parser_reads_structured_data() -> None:
    message = rfc5424.parse(b'<13>1 - h a p m [id@1 k="a\\"b\\]c"][two] msg')
    assert message.structured_data == [("id@1", [("k", 'a"b]c')]), ("two", [])]
    assert message.msg == b"msg"


# ---- the handler, on real sockets ------------------------------------------------


def test_targets_parse_and_bad_ones_are_usage_errors() -> None:
    assert parse_target("unix") == Target(text="unix", path=DEV_LOG)
    assert parse_target("unix:/run/x.sock").path == "/run/x.sock"
    assert parse_target("127.0.0.1:5514").address == ("127.0.0.1", 5514)
    assert parse_target("127.0.0.1").address == ("127.0.0.1", 514)
    v6 = parse_target("[::1]:5514")
    assert v6.address is not None and v6.address[:2] == ("::1", 5514)
    assert v6.family == socket.AF_INET6
    for bad in ("host:port", "127.0.0.1:0", ":514", "no-such-host.invalid:514"):
        with pytest.raises(UsageError, match="--syslog"):
            parse_target(bad)


def test_the_handler_sends_one_datagram_per_message_over_udp() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(30)
        handler = SyslogHandler(parse_target(f"127.0.0.1:{receiver.getsockname()[1]}"))
        handler.setFormatter(Rfc5424Formatter(facility=3, hostname="h"))
        handler.handle(log_record(record()))
        handler.handle(log_record("second"))
        first, second = receiver.recv(65536), receiver.recv(65536)
        handler.close()
    assert rfc5424.parse(first).msgid == "put"
    assert rfc5424.parse(second).msg == b"second"


def test_a_missing_local_socket_drops_messages_says_so_once_and_recovers(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "log")
    told: list[str] = []
    handler = SyslogHandler(parse_target(f"unix:{path}"), report=told.append)
    handler.setFormatter(LocalFormatter(facility=3))
    handler.handle(log_record("lost 1"))
    handler.handle(log_record("lost 2"))
    assert handler.dropped == 2 and len(told) == 1 and path in told[0]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        receiver.settimeout(30)
        handler.handle(log_record("found"))
        assert receiver.recv(65536).endswith(b"]: found")
    assert len(told) == 2 and "2 dropped" in told[1]
    handler.close()


def test_a_restarted_local_receiver_is_found_again(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    handler = SyslogHandler(parse_target(f"unix:{path}"), report=lambda _text: None)
    handler.setFormatter(LocalFormatter(facility=3))
    for attempt in range(2):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(path)
            receiver.settimeout(30)
            handler.handle(log_record(f"to receiver {attempt}"))
            assert receiver.recv(65536).endswith(f"to receiver {attempt}".encode())
        os.unlink(path)
        handler.handle(log_record("nobody listens"))  # fails: connects anew next time
    handler.close()
    assert handler.dropped == 2
