"""The command line's grammar: argparse, and nothing else.

Every option is declared here, with its range (argtypes.py) and its default from
config.py, so ``--help`` always tells the truth. Building the parser imports only
argparse and the constants: a command pays for what it runs, not for what it
could have run (``cli/__init__.py`` imports the command's module afterwards).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from .. import __version__
from ..config import (
    CLIENT_TIMEOUT_S,
    DEFAULT_PORT,
    GIVE_UP_S,
    MAX_CONNECTIONS_LIMIT,
    SYSLOG_FACILITIES,
    SYSLOG_FACILITY,
    SYSLOG_PORT,
    TFTP_BLKSIZE,
    TFTP_MAX_BLKSIZE,
    TFTP_MAX_WINDOWSIZE,
    TFTP_MIN_BLKSIZE,
    TFTP_WINDOWSIZE,
    UDP_CHUNK_BYTES,
    UDP_MAX_CHUNK_BYTES,
    UDP_MIN_CHUNK_BYTES,
    ServerConfig,
)
from .argtypes import (
    duration,
    non_negative,
    port,
    positive,
    probability,
    ranged,
    rate,
    size_bytes,
)

DESCRIPTION = (
    "Fast, verified file transfer. REMOTE is [tcp://|udp://|tftp://]HOST[:PORT][/PATH] "
    "(a bare HOST is tcp; IPv6 in brackets when a port follows: [::1]:9021/dir)."
)


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told the width: left to itself it imports shutil (and
    with it bz2, lzma, fnmatch: 4 ms) to ask, once per argument added."""

    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size(2).columns - 2
        except OSError:
            width = 78
        super().__init__(prog, width=max(width, 40))


Adder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], argparse.ArgumentParser]


def build(
    argv: list[str] | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and each command's parser by name (for usage errors). Given the
    arguments, only the command they name is built: argparse takes ~20 ms to build
    all of them, a third of a command's budget."""
    parser = argparse.ArgumentParser(
        prog="ftransfer", description=DESCRIPTION, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"ftransfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = next((a for a in argv or [] if not a.startswith("-")), None)
    wanted = [COMMANDS[named]] if named in COMMANDS else list(COMMANDS.values())
    commands: dict[str, argparse.ArgumentParser] = {}
    for add in wanted:
        command = add(sub)
        commands[command.prog.split()[-1]] = command
    return parser, commands


# ---- shared options -------------------------------------------------------------------


def _client(p: argparse.ArgumentParser, *, transfer: bool = False) -> None:
    p.add_argument(
        "--timeout",
        type=positive,
        default=CLIENT_TIMEOUT_S,
        metavar="S",
        help=f"give up when a TCP server is silent this long (default {CLIENT_TIMEOUT_S:g})",
    )
    p.add_argument("--json", action="store_true", help="print JSON, one object per line")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="trace connections, TLS, requests and replies on stderr (secrets never shown)",
    )
    p.add_argument("--udp", action="store_true", help="use the UDP mode (same as udp://)")
    p.add_argument(
        "--transport",
        choices=["tcp", "udp", "auto"],
        default=None,
        help="tcp, udp, or auto: probe the path and take UDP on lossy or long ones, TCP "
        "otherwise (and when UDP is blocked); the choice and its reason are printed",
    )
    p.add_argument(
        "--chunk",
        type=ranged(UDP_MIN_CHUNK_BYTES, UDP_MAX_CHUNK_BYTES),
        default=None,
        metavar="BYTES",
        help=f"UDP payload per datagram (default {UDP_CHUNK_BYTES}, safe on a 1500-byte "
        f"MTU; up to {UDP_MAX_CHUNK_BYTES} on loopback)",
    )
    p.add_argument(
        "--give-up",
        type=positive,
        default=None,
        metavar="S",
        help=f"UDP and TFTP: fail after this long without progress (default {GIVE_UP_S:g})",
    )
    p.add_argument("--cc", choices=["bbr", "reno"], default=None, help="UDP congestion control")
    _security(p)
    if transfer:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, no summary")
        p.add_argument(
            "--limit-rate",
            type=rate,
            default=None,
            metavar="RATE",
            help="move at most RATE bytes per second, e.g. 20M (binary K/M/G, as curl)",
        )
        p.add_argument(
            "--blksize",
            type=ranged(TFTP_MIN_BLKSIZE, TFTP_MAX_BLKSIZE),
            default=None,
            metavar="N",
            help=f"tftp:// only: block size to ask for (default {TFTP_BLKSIZE})",
        )
        p.add_argument(
            "--windowsize",
            type=ranged(1, TFTP_MAX_WINDOWSIZE),
            default=None,
            metavar="N",
            help=f"tftp:// only: blocks per ACK to ask for (default {TFTP_WINDOWSIZE})",
        )
        p.add_argument(
            "--netascii", action="store_true", help="tftp:// only: text mode (CR LF lines)"
        )


def _security(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "security (TCP is TLS 1.3, UDP is sealed with keys from it; the server is checked like ssh)"
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext TCP and UDP, unencrypted and unauthenticated (the server must say it too)",
    )
    g.add_argument(
        "--tcp-port",
        type=port,
        metavar="PORT",
        help="udp:// only: the server's TCP port, for the TLS connection that brings the "
        "keys (default: the UDP port)",
    )
    g.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="trusted server fingerprints (default ~/.config/ftransfer/known_hosts)",
    )
    g.add_argument(
        "--strict-host-keys",
        action="store_true",
        help="refuse a server not in known_hosts (default: record it on first use)",
    )
    g.add_argument("--fingerprint", metavar="SHA256:...", help="trust only this server key (a pin)")
    g.add_argument("--ca", metavar="FILE", help="trust servers whose certificate FILE signed")
    g.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password for user@host from FILE (else $FTRANSFER_PASSWORD or a prompt)",
    )


def tree_options(p: argparse.ArgumentParser, verb: str, *, replace: str, there: str) -> None:
    """put's and get's -r, --no-clobber, --update and --checksum (the shell's too)."""
    p.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help=f"{verb} directories and everything in them (symlinks are skipped)",
    )
    p.add_argument("--no-clobber", action="store_true", help=f"refuse to replace {replace}")
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over instead of resuming an interrupted transfer (TCP; files over 8 MiB)",
    )
    skip = p.add_mutually_exclusive_group()
    for mode, what in (("update", "modification time"), ("checksum", "digest")):
        skip.add_argument(
            f"--{mode}",
            dest="skip",
            action="store_const",
            const=mode,
            help=f"skip files {there} with the same size and {what}",
        )


def _remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("remote", metavar="REMOTE")


# ---- client commands --------------------------------------------------------------------


def _put(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "put",
        help="upload files",
        usage="ftransfer put [options] LOCAL... REMOTE",
        description="Upload LOCAL files (with -r, directories) to REMOTE: into it if it is "
        "a directory, ends in '/' or several are given; otherwise to that name.",
    )
    p.add_argument("paths", nargs="+", metavar="LOCAL... REMOTE", help=argparse.SUPPRESS)
    tree_options(p, "upload", replace="existing files", there="the server has")
    _client(p, transfer=True)
    return p


def _get(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "get",
        help="download files",
        usage="ftransfer get [options] REMOTE... [LOCAL]",
        description="Download REMOTE to LOCAL (default: here, same name; a directory keeps "
        "the name; '-' is standard output). Several REMOTEs (of one server) or a pattern "
        "(quoted: 'host/logs/*.gz') go into the directory LOCAL; -r fetches directories.",
    )
    p.add_argument("paths", nargs="+", metavar="REMOTE... [LOCAL]", help=argparse.SUPPRESS)
    tree_options(p, "download", replace="a local file", there="already here")
    _client(p, transfer=True)
    return p


def _ls(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(sub, "ls", help="list a directory")
    _remote(p)
    _client(p)
    return p


def _stat(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(sub, "stat", help="type, size, mode, mtime and xxh3-128 of a name")
    _remote(p)
    _client(p)
    return p


def _rm(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(sub, "rm", help="remove a file or an empty directory")
    _remote(p)
    _client(p)
    return p


def _mkdir(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(sub, "mkdir", help="create a directory")
    _remote(p)
    p.add_argument("-p", "--parents", action="store_true", help="create parents too")
    _client(p)
    return p


def _mv(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "mv",
        help="rename on the server",
        description=(
            "Rename REMOTE to NEWPATH on the server (into NEWPATH if it is a directory;"
            " / is the root)."
        ),
    )
    _remote(p)
    p.add_argument("newpath", metavar="NEWPATH")
    p.add_argument("--no-clobber", action="store_true", help="refuse to replace NEWPATH")
    _client(p)
    return p


def _ping(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "ping",
        help="time-stamped echoes: RTT min/avg/max/jitter and loss",
        description="UDP echoes by default (the path the UDP mode takes); --tcp or a "
        "tcp:// REMOTE echoes over the TLS connection instead (PING frames).",
    )
    _remote(p)
    p.add_argument("--udp", action="store_true", help="UDP echoes (the default)")
    p.add_argument("--tcp", action="store_true", help="echoes over the TCP (TLS) connection")
    p.add_argument("-c", "--count", type=ranged(1, 1_000_000), default=5, metavar="N")
    p.add_argument("-i", "--interval", type=positive, default=0.2, metavar="S")
    p.add_argument(
        "--timeout", type=positive, default=1.0, metavar="S", help="wait for each echo (default 1)"
    )
    _security(p)
    return p


def _relay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(sub, "relay", help="a UDP relay that impairs traffic (rehearse a bad link)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="port 0 picks one")
    p.add_argument("--to", required=True, metavar="HOST:PORT")
    for name, text in (
        ("loss", "drop"),
        ("dup", "duplicate"),
        ("reorder", "hold back"),
        ("corrupt", "flip one bit of"),
    ):
        p.add_argument(
            f"--{name}",
            type=probability,
            default=0.0,
            metavar="P",
            help=f"probability to {text} a datagram",
        )
    p.add_argument("--delay", type=non_negative, default=0.0, metavar="MS", help="one-way delay")
    p.add_argument(
        "--jitter", type=non_negative, default=0.0, metavar="MS", help="extra random delay"
    )
    p.add_argument(
        "--rate", type=positive, default=None, metavar="MBIT", help="bottleneck rate (50 ms queue)"
    )
    p.add_argument("--seed", type=int, default=0, metavar="N")
    return p


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, **kwargs: str
) -> argparse.ArgumentParser:
    return sub.add_parser(name, formatter_class=_Formatter, **kwargs)  # type: ignore[arg-type]


# ---- the server --------------------------------------------------------------------------


def _serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(sub, "serve", help="serve a directory")
    d = ServerConfig()
    p.add_argument("--root", default=".", help="directory to serve (default: current)")
    s3 = p.add_argument_group(
        "object store",
        "serve an S3 bucket instead of a directory; credentials come from the AWS "
        "environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or AWS_PROFILE",
    )
    s3.add_argument(
        "--store", metavar="s3://BUCKET[/PREFIX]", default=None, help="the bucket (and prefix)"
    )
    s3.add_argument(
        "--s3-endpoint", metavar="URL", default=None, help="an S3-compatible store's URL"
    )
    s3.add_argument("--s3-region", metavar="REGION", default=None, help="the bucket's region")
    p.add_argument(
        "--host", default=d.host, help=f"address to listen on (default {d.host}; :: for all)"
    )
    p.add_argument("--port", type=port, default=DEFAULT_PORT, help="TCP port; 0 picks a free one")
    p.add_argument("--read-only", action="store_true", help="refuse every change")
    g = p.add_argument_group("security")
    g.add_argument(
        "--users",
        metavar="FILE",
        help="require a login; FILE from `ftransfer user add` (re-read on SIGHUP)",
    )
    g.add_argument(
        "--anonymous-write",
        action="store_true",
        help="without --users, let anyone change files (default: anonymous is read-only)",
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext TCP (no TLS) for trusted links and benchmarks",
    )
    g.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the server's key and certificate (default ~/.local/state/ftransfer)",
    )
    g.add_argument("--cert", metavar="FILE", help="a CA-issued certificate (PEM), with --key")
    g.add_argument("--key", metavar="FILE", help="the private key of --cert (PEM)")
    limit = ranged(1, MAX_CONNECTIONS_LIMIT)
    p.add_argument(
        "--max-connections",
        type=limit,
        default=d.max_connections,
        metavar="N",
        help=f"connections at once (default {d.max_connections})",
    )
    p.add_argument(
        "--max-per-address",
        type=limit,
        default=d.max_connections_per_address,
        metavar="N",
        help=f"connections at once from one address (default {d.max_connections_per_address})",
    )
    _seconds(p, "--idle-timeout", d.idle_timeout_s, "close a silent connection")
    _seconds(p, "--hello-timeout", d.hello_timeout_s, "deadline for the opening HELLO")
    p.add_argument(
        "--max-file-size",
        type=size_bytes,
        default=d.max_file_bytes,
        metavar="BYTES",
        help="largest upload, e.g. 10G (default 1T)",
    )
    p.add_argument(
        "--max-rate",
        type=rate,
        default=None,
        metavar="RATE",
        help="bytes per second each connection (UDP: session) may move each way, "
        "e.g. 20M (binary K/M/G, as curl)",
    )
    p.add_argument(
        "--max-total-rate",
        type=rate,
        default=None,
        metavar="RATE",
        help="bytes per second the whole server may move each way, TCP and UDP together",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="skip fsync before commit (faster; a crash may lose recent uploads)",
    )
    p.add_argument(
        "--partial-ttl",
        type=duration,
        default=d.partial_ttl_s,
        metavar="TIME",
        help="keep an interrupted upload's partial this long for a resume "
        "(seconds, or 90m, 12h, 1d; default 1d)",
    )
    p.add_argument(
        "--udp-port",
        type=port,
        default=None,
        metavar="N",
        help="UDP port (default: the TCP port's)",
    )
    p.add_argument("--no-udp", action="store_true", help="serve TCP only")
    _seconds(p, "--udp-give-up", d.udp_give_up_s, "abandon a UDP session without progress")
    p.add_argument(
        "--tftp-port",
        type=port,
        default=None,
        metavar="N",
        help="also serve standard TFTP on UDP port N (off by default; 0 picks one)",
    )
    p.add_argument(
        "--tftp-max-blksize",
        type=ranged(TFTP_MIN_BLKSIZE, TFTP_MAX_BLKSIZE),
        default=d.tftp_max_blksize,
        metavar="N",
        help=f"largest TFTP blksize a client may get (default {d.tftp_max_blksize})",
    )
    p.add_argument(
        "--tftp-max-window",
        type=ranged(1, TFTP_MAX_WINDOWSIZE),
        default=d.tftp_max_window,
        metavar="N",
        help=f"largest TFTP windowsize a client may get (default {d.tftp_max_window})",
    )
    p.add_argument(
        "--tftp-max-sessions",
        type=ranged(1, 4096),
        default=d.tftp_max_sessions,
        metavar="N",
        help=f"TFTP transfers at once (default {d.tftp_max_sessions}; "
        f"{d.tftp_max_sessions_per_address} per address)",
    )
    _seconds(p, "--tftp-give-up", d.tftp_give_up_s, "end a TFTP transfer without progress")
    p.add_argument(
        "--tftp-writable",
        action="store_true",
        help="let TFTP clients upload (TFTP has no authentication at all)",
    )
    _logs(p)
    return p


def _logs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "logs (one record per request: peer, user, operation, path, bytes, result...)"
    )
    g.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the least severe message written (default info; debug adds each TICKET)",
    )
    g.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="stderr: one readable line per message (text, the default) or one JSON object",
    )
    g.add_argument(
        "--syslog",
        metavar="HOST:PORT|unix",
        help="also send every message as RFC 5424 syslog: over UDP to HOST:PORT (port "
        f"{SYSLOG_PORT} if none), or to the local socket (unix: /dev/log; unix:PATH)",
    )
    g.add_argument(
        "--syslog-facility",
        default=SYSLOG_FACILITY,
        choices=list(SYSLOG_FACILITIES),
        metavar="NAME",
        help=f"the syslog facility (default {SYSLOG_FACILITY}; local0 to local7, ftp, ...)",
    )


def _user(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "user",
        help="manage the users of `serve --users FILE`",
        description="Add, remove and list the users of a users file (scrypt password "
        "hashes, a root and permissions each). A running server re-reads it on SIGHUP.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add a user, or change one's password and settings")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--root",
        metavar="SUBDIR",
        help="the user's root inside the served root (default: NAME; / for all of it)",
    )
    add.add_argument("--read-only", action="store_true", help="read and list only")
    add.add_argument(
        "--permissions", metavar="rwd", help="any of r(ead) w(rite) d(elete) (default rwd)"
    )
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (else prompt twice)",
    )
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("name", metavar="NAME")
    actions.add_parser("list", help="list the users, their roots and permissions")
    for action in (add, remove, actions.choices["list"]):
        action.add_argument("--users", metavar="FILE", required=True, help="the users file")
    return p


def _seconds(p: argparse.ArgumentParser, flag: str, default: float, text: str) -> None:
    p.add_argument(
        flag, type=positive, default=default, metavar="S", help=f"{text} (default {default:g} s)"
    )


def _shell(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "shell",
        help="an interactive session (sftp habits)",
        usage="ftransfer shell [options] [USER@]HOST[:PORT]",
        description="Open one connection (one login) and take commands at a prompt: ls [-l], "
        "cd, pwd, lcd, lpwd, lls, get [-r], put [-r], mkdir [-p], rm, mv, stat, sum, ping, "
        "help, exit. Ctrl-C aborts the transfer under way, Ctrl-D leaves.",
    )
    _remote(p)
    p.add_argument(
        "-b",
        "--batch",
        metavar="FILE",
        default=None,
        help="run the commands in FILE ('-': standard input) and stop at the first failure",
    )
    _client(p, transfer=True)
    return p


def _sum(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "sum",
        help="the xxh3-128 of local files",
        description="Print the xxh3-128 of each local FILE, the digest the server's stat and "
        "--json show, as sha256sum prints its own.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    return p


def _completion(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    p = _command(
        sub,
        "completion",
        help="print a shell completion script",
        description="Print the completion script for bash (source <(ftransfer completion "
        "bash)) or zsh (save it as _ftransfer in a directory of $fpath).",
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    return p


def _manpage(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return _command(
        sub,
        "manpage",
        help="print the man page (roff)",
        description="Print ftransfer(1) as roff: ftransfer manpage | man -l -",
    )


COMMANDS: dict[str, Adder] = {
    "serve": _serve,
    "put": _put,
    "get": _get,
    "ls": _ls,
    "stat": _stat,
    "rm": _rm,
    "mkdir": _mkdir,
    "mv": _mv,
    "ping": _ping,
    "relay": _relay,
    "user": _user,
    "shell": _shell,
    "sum": _sum,
    "completion": _completion,
    "manpage": _manpage,
}
