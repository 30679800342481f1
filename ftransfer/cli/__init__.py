"""The command line: parse, call the client or the server, print. Nothing else.

Theory of operation
-------------------
``main`` builds the argparse grammar (parser.py), then imports only the module of
the command it runs: ``serve`` the server and asyncio, a client command the
blocking client, ``--version`` nothing at all. Start-up is part of the product
(docs/perf-notes.md has the budget: a one-file get requests its first byte within
60 ms of the process starting, on a machine where the bare interpreter takes 16).

Signals and exit codes (README, "Exit codes"): Ctrl-C (SIGINT) and SIGTERM stop a
transfer at once; what it wrote is removed (temporary files), the server is told
where it can be (UDP, TFTP), and the command exits 130 or 143. A closed output
(``get f - | head``) ends quietly with 141, as a program killed by SIGPIPE does.
An expected failure prints one line, ``ftransfer: error: ...``, and exits with
its error's code; a usage error prints the command's usage and exits 2.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from .. import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT), as shells report it."""
EXIT_TERMINATED = 143
"""SIGTERM (128 + SIGTERM)."""
EXIT_OUTPUT_CLOSED = 141
"""The reader of our output went away (128 + SIGPIPE)."""


class Terminated(BaseException):
    """SIGTERM arrived: unwind like KeyboardInterrupt, cleaning up on the way."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def _run(command: str, args: argparse.Namespace) -> int:
    from .. import errors
    from ..client.local import OutputClosed

    try:
        if command == "serve":
            from .serve import serve

            return serve(args)
        if command == "user":
            from .users import user

            return user(args)
        if command in ("completion", "manpage"):
            from . import generated

            return generated.completion(args) if command == "completion" else generated.man(args)
        if command in ("shell", "sum"):
            from . import tools

            return tools.shell(args) if command == "shell" else tools.sum_files(args)
        if command in ("ping", "relay"):
            from . import tools

            return int(getattr(tools, command)(args))
        from .commands import COMMANDS

        return COMMANDS[command](args)
    except OutputClosed:
        return EXIT_OUTPUT_CLOSED
    except errors.UsageError:
        raise
    except errors.FtransferError as exc:
        from .commands import report_error

        return report_error(exc)


def _with_config(
    parser: argparse.ArgumentParser,
    commands: dict[str, argparse.ArgumentParser],
    arguments: list[str],
    args: argparse.Namespace,
) -> argparse.Namespace:
    """The arguments again, over the config file's defaults (cli/config_file.py),
    if there is a file and a section for this command."""
    from . import config_file

    command = args.command
    if command not in config_file.CLIENT_COMMANDS and command not in ("serve", "ping"):
        return args
    config = config_file.load()
    if config is None:
        return args
    if command == "ping":  # (a host's address only)
        args.config = config
        return args
    sections = ["serve"] if command == "serve" else ["defaults"]
    remote = config_file.remote_text(command, args)
    alias = None if remote is None else config_file.alias_of(remote, config)
    if alias is not None:
        sections.append(f"hosts.{alias}")
    config_file.apply_defaults(commands[command], config, sections)
    args = parser.parse_args(arguments)
    args.config = config
    return args


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments == ["--version"]:  # nothing to import for this one
        print(f"ftransfer {__version__}")
        return 0
    from ..errors import UsageError
    from . import parser as grammar

    parser, commands = grammar.build(arguments)
    args = parser.parse_args(arguments)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = _with_config(parser, commands, arguments, args)
        return _run(args.command, args)
    except UsageError as exc:
        commands[args.command].error(str(exc))  # the command's usage, exit 2
    except KeyboardInterrupt:
        sys.stderr.write("ftransfer: interrupted\n")
        return EXIT_INTERRUPTED
    except Terminated:
        sys.stderr.write("ftransfer: terminated\n")
        return EXIT_TERMINATED
    return 2  # unreachable: error() exits


if __name__ == "__main__":
    raise SystemExit(main())
