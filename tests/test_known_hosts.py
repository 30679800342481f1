"""client/known_hosts.py: trust on first use, refusals, the file's format."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from ftransfer.client.known_hosts import KnownHosts, Trust, format_address, verify_server
from ftransfer.errors import ExitCode, HostKeyError

OLD = "SHA256:" + "A" * 43
NEW = "SHA256:" + "B" * 42 + "c"
THIRD = "SHA256:" + "+/09" * 10 + "xyz"


class Notices:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, message: str) -> None:
        self.seen.append(message)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "config" / "ftransfer" / "known_hosts"


def verify(
    path: Path,
    address: str,
    fingerprint: str,
    notices: Notices,
    *,
    strict: bool = False,
    pinned: str | None = None,
) -> None:
    verify_server(str(path), address, fingerprint, strict=strict, pinned=pinned, notice=notices)


def test_first_use_records_with_a_notice_then_knows(path: Path) -> None:
    notices = Notices()
    verify(path, "files.example:9021", OLD, notices)
    assert notices.seen == [
        f"ftransfer: files.example:9021: new server, fingerprint {OLD}, recorded in {path}"
    ]
    assert path.read_text() == f"files.example:9021 {OLD}\n"
    verify(path, "files.example:9021", OLD, notices)
    assert len(notices.seen) == 1
    assert KnownHosts(str(path)).check("files.example:9021", OLD) == Trust(status="known")


def test_the_file_and_directory_are_private(path: Path) -> None:
    verify(path, "h:1", OLD, Notices())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_a_changed_fingerprint_is_refused_and_nothing_written(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(f"# mine\nother:1 {THIRD}\nfiles.example:9021 {OLD}\n")
    before = path.read_bytes()
    notices = Notices()
    with pytest.raises(HostKeyError) as caught:
        verify(path, "files.example:9021", NEW, notices)
    message = str(caught.value)
    assert "WARNING: the fingerprint of files.example:9021 has changed" in message
    assert f"recorded:  {OLD} ({path} line 3)" in message
    assert f"presented: {NEW}" in message
    assert f"remove line 3 of {path} (`sed -i '3d' {path}`)" in message
    assert caught.value.exit_code is ExitCode.HOST_KEY
    assert path.read_bytes() == before
    assert not notices.seen
    trust = KnownHosts(str(path)).check("files.example:9021", NEW)
    assert trust == Trust(status="changed", recorded=OLD, line=3)


def test_strict_refuses_an_unknown_server_and_writes_nothing(path: Path) -> None:
    notices = Notices()
    with pytest.raises(HostKeyError) as caught:
        verify(path, "h:9021", OLD, notices, strict=True)
    message = str(caught.value)
    assert f"is not in {path} (--strict-host-keys)" in message
    assert f"--fingerprint {OLD}" in message
    assert not path.exists()
    assert not notices.seen


def test_strict_accepts_a_known_server(path: Path) -> None:
    verify(path, "h:9021", OLD, Notices())
    verify(path, "h:9021", OLD, Notices(), strict=True)


def test_a_matching_pin_passes_without_the_file(path: Path) -> None:
    notices = Notices()
    verify(path, "h:9021", OLD, notices, pinned=OLD)
    verify(path, "h:9021", OLD, notices, pinned=OLD.removeprefix("SHA256:") + "=")
    assert not path.exists()
    assert not notices.seen


def test_a_pin_decides_alone(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(f"h:9021 {OLD}\n")
    verify(path, "h:9021", NEW, Notices(), pinned=NEW)  # the file's OLD is not consulted
    with pytest.raises(HostKeyError) as caught:
        verify(path, "h:9021", OLD, Notices(), pinned=NEW)
    assert OLD in str(caught.value) and NEW in str(caught.value)
    assert path.read_text() == f"h:9021 {OLD}\n"


def test_ipv6_addresses(path: Path) -> None:
    address = format_address("::1", 9021)
    assert address == "[::1]:9021"
    assert format_address("files.example", 21) == "files.example:21"
    verify(path, address, OLD, Notices())
    assert path.read_text() == f"[::1]:9021 {OLD}\n"
    store = KnownHosts(str(path))
    assert store.lookup("[::1]:9021") == [(1, OLD)]
    assert store.lookup("[::1]:9022") == []
    assert store.malformed == []


def test_ports_and_host_case(path: Path) -> None:
    store = KnownHosts(str(path))
    store.add("Files.Example:9021", OLD)
    assert store.check("files.example:9021", OLD) == Trust(status="known")
    assert store.check("files.example:9022", OLD) == Trust(status="unknown")


def test_comments_blank_and_malformed_lines_are_tolerated(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(
        "# a comment\n"
        "\n"
        "   \n"
        "no-fingerprint:9021\n"
        f"noport {OLD}\n"
        "h:9021 SHA256:short\n"
        f"h:99999 {OLD}\n"
        f"h:9021 {OLD} trailing\n"
        "\x00\xff binary\n"
        f"  h:9021   {NEW}  \n"
    )
    store = KnownHosts(str(path))
    assert store.lookup("h:9021") == [(10, NEW)]
    assert store.malformed == [4, 5, 6, 7, 8, 9]
    assert store.check("h:9021", NEW).status == "known"


def test_the_same_pair_is_not_added_twice(path: Path) -> None:
    store = KnownHosts(str(path))
    store.add("h:1", OLD)
    store.add("h:1", OLD)
    store.add("h:2", OLD)
    assert path.read_text() == f"h:1 {OLD}\nh:2 {OLD}\n"


def test_a_second_key_for_an_address_is_known(path: Path) -> None:
    store = KnownHosts(str(path))
    store.add("h:1", OLD)
    store.add("h:1", NEW)  # added by hand or by add(): either key is accepted
    assert store.lookup("h:1") == [(1, OLD), (2, NEW)]
    assert store.check("h:1", NEW).status == "known"
    assert store.check("h:1", THIRD) == Trust(status="changed", recorded=OLD, line=1)


def test_an_unterminated_last_line_is_not_joined(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(f"h:1 {OLD}")
    KnownHosts(str(path)).add("h:2", NEW)
    assert path.read_text() == f"h:1 {OLD}\nh:2 {NEW}\n"


def test_add_refuses_a_malformed_entry(path: Path) -> None:
    with pytest.raises(ValueError):
        KnownHosts(str(path)).add("h", OLD)
    with pytest.raises(ValueError):
        KnownHosts(str(path)).add("h:1", "md5:00")
    assert not path.exists()


def test_concurrent_additions_keep_whole_lines(path: Path) -> None:
    addresses = [f"host-{i}.example:{1000 + i}" for i in range(40)]
    barrier = threading.Barrier(len(addresses))

    def add(address: str) -> None:
        barrier.wait()
        KnownHosts(str(path)).add(address, OLD)

    threads = [threading.Thread(target=add, args=(a,)) for a in addresses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_text().splitlines()
    assert sorted(lines) == sorted(f"{a} {OLD}" for a in addresses)
    assert KnownHosts(str(path)).malformed == []


def test_importing_the_module_pulls_in_no_network_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ftransfer.client.known_hosts;"
        "print(sorted({'socket', 'ssl', 'asyncio', 'cryptography'} & set(sys.modules)))"
    )
    import sysconfig

    # -S: site hooks (the editable install's finder, coverage's subprocess hook
    # under CI) import modules of their own; the package and its dependencies
    # come from PYTHONPATH instead.
    paths = [str(Path(__file__).resolve().parent.parent)]
    paths += {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env
    )
    assert out.stdout.strip() == "[]", out.stderr
