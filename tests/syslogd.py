"""A real syslog receiver for the tests: Debian's rsyslogd, in the foreground,
with its own configuration, listening on a UDP port of 127.0.0.1 (imudp) and on
a local datagram socket (imuxsock), parsing ``@cee:`` JSON with mmjsonparse
(its defaults) and writing what it understood of each message to a file, one
tab-separated line: facility, severity, timestamp, hostname, app-name, procid,
msgid and the JSON it parsed (``$!all-json``).

imudp cannot bind port 0, so a free port is found by binding one and closing
it. Readiness is not guessed: probes are sent to both inputs until rsyslog's
file shows them, polled with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

RSYSLOGD = shutil.which("rsyslogd") or next(
    (path for path in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if Path(path).exists()), None
)
CONFIG = """\
global(workDirectory="{work}")
module(load="imudp")
module(load="imuxsock" SysSock.Use="off")
module(load="mmjsonparse")
template(name="fields" type="string" string="%syslogfacility%\\t%syslogseverity%\\t\
%timereported:::date-rfc3339%\\t%hostname%\\t%app-name%\\t%procid%\\t%msgid%\\t%$!all-json%\\n")
ruleset(name="in") {{
  action(type="mmjsonparse")
  action(type="omfile" file="{out}" template="fields")
}}
input(type="imudp" address="127.0.0.1" port="{port}" ruleset="in")
input(type="imuxsock" socket="{socket}" ruleset="in" ratelimit.interval="0")
"""
"""The local socket is as on a Debian machine (imuxsock's default parser, which
expects syslog(3)'s header), but with no rate limit and not /dev/log."""


@dataclass
class Received:
    """One message as rsyslog parsed it."""

    facility: int
    severity: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    fields: dict[str, Any]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Rsyslog:
    """rsyslogd on a free UDP port and a socket; ``received`` reads its file."""

    def __init__(self, directory: Path) -> None:
        if RSYSLOGD is None:
            pytest.skip("rsyslogd is not installed (Debian: apt-get install rsyslog)")
        self.out = directory / "rsyslog.out"
        self._short = Path(tempfile.mkdtemp(prefix="ftl-"))  # sun_path: 108 bytes
        self.socket = str(self._short / "log")
        self.port = free_udp_port()
        config = directory / "rsyslog.conf"
        work = directory / "rsyslog-work"
        work.mkdir()
        config.write_text(
            CONFIG.format(work=work, out=self.out, port=self.port, socket=self.socket)
        )
        self._log = open(directory / "rsyslogd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(config), "-i", str(directory / "rsyslogd.pid")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        local = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:

            def probed() -> bool:
                assert self.proc.poll() is None, "rsyslogd exited: see rsyslogd.log"
                udp.sendto(b"<14>1 - - probe - udp - ready", ("127.0.0.1", self.port))
                with contextlib.suppress(OSError):  # not bound yet
                    local.sendto(b"<14>probe: ready", self.socket)
                apps = {(m.app_name, m.msgid) for m in self.received()}
                return {("probe", "udp"), ("probe", "-")} <= apps

            wait_until(probed, "rsyslogd to log a probe on each of its inputs")
        finally:
            udp.close()
            local.close()

    def received(self) -> list[Received]:
        if not self.out.exists():
            return []
        lines = self.out.read_text(encoding="utf-8", errors="replace").splitlines()
        return [_received(line) for line in lines if line.count("\t") >= 7]

    def records(self, count: int) -> list[Received]:
        """Wait until rsyslog has written ``count`` messages from ftransfer."""
        found: list[Received] = []

        def enough() -> bool:
            found[:] = [m for m in self.received() if m.app_name == "ftransfer"]
            return len(found) >= count

        wait_until(enough, f"{count} ftransfer messages in {self.out}")
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()
        shutil.rmtree(self._short, ignore_errors=True)


def _received(line: str) -> Received:
    facility, severity, stamp, host, app, procid, msgid, parsed = line.split("\t", 7)
    return Received(
        int(facility), int(severity), stamp, host, app, procid, msgid, json.loads(parsed)
    )
