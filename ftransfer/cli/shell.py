"""``ftransfer shell``: an interactive session on one server, as sftp and lftp have.

Theory of operation
-------------------
A ``Shell`` is a ``cmd.Cmd`` (readline editing and history when the terminal has
readline) over one ``Client``: one connection, one login, for the whole session.
It keeps a remote working directory (``cd``, ``pwd``) and uses the process's own
for the local side (``lcd``, ``lpwd``, ``lls``). Each command is parsed with
shlex and a small argparse parser of its own, then calls the same Client API
and prints with the same functions (cli/output.py, cli/progress.py) as the
one-shot commands, so ``get -r``, ``put -r``, ``--update`` and the progress bars
behave exactly as they do there.

- A remote name is relative to the working directory unless it starts with
  ``/``; ``..`` and ``.`` are resolved here, never sent (the server refuses
  them in names anyway).
- Tab completion offers commands, then remote names (from a listing cached per
  directory, dropped after any command that changes the server) or local ones.
- Ctrl-C aborts the transfer under way (its temporaries are removed, as in the
  one-shot commands) and returns to the prompt; the client reconnects on the
  next command if the connection was left out of step. Ctrl-D or ``exit``
  leaves. A failed command prints its one line and the session goes on.
- ``-b FILE`` runs the file's commands without a prompt and stops at the first
  that fails, with that failure's exit code (sftp's ``-b``); ``-`` reads them
  from standard input.
"""

from __future__ import annotations

import argparse
import cmd
import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator

from ..client import Client, Entry, EntryKind, escape
from ..errors import FtransferError, UsageError
from .output import print_listing, print_stat
from .progress import Bars

COMMANDS = (
    "ls", "cd", "pwd", "lcd", "lpwd", "lls", "get", "put", "mkdir", "rm", "mv",
    "stat", "sum", "ping", "help", "exit",
)  # fmt: skip


class _ArgumentError(Exception):
    """A command line the shell cannot parse: its message is printed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            sys.stdout.write(message)
        raise _ArgumentError("")


def _parser(name: str, usage: str, *flags: tuple[str, ...], tree: str | None = None) -> _Parser:
    parser = _Parser(prog=name, usage=f"{name} {usage}", add_help=True)
    for option in flags:
        parser.add_argument(*option, action="store_true")
    if tree is not None:  # the one-shot get's and put's own options
        from .parser import tree_options

        if tree == "get":
            tree_options(parser, "download", replace="a local file", there="already here")
        else:
            tree_options(parser, "upload", replace="existing files", there="the server has")
    parser.add_argument("operands", nargs="*")
    return parser


HISTORY_LINES = 1000
"""Lines of history kept across sessions."""
TREE = "[-r] [--no-clobber] [--update|--checksum]"
PARSERS = {
    "ls": _parser("ls", "[-l] [PATH]", ("-l",)),
    "get": _parser("get", f"{TREE} REMOTE... [LOCAL]", tree="get"),
    "put": _parser("put", f"{TREE} LOCAL... [REMOTE]", tree="put"),
    "mkdir": _parser("mkdir", "[-p] PATH", ("-p",)),
}


def join(cwd: str, path: str) -> str:
    """A remote path from the working directory, ``.`` and ``..`` resolved ("" is
    the root)."""
    parts = [] if path.startswith("/") else [p for p in cwd.split("/") if p]
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


class Shell(cmd.Cmd):
    """The interactive session (see the module docstring)."""

    def __init__(self, client: Client, args: argparse.Namespace, *, batch: bool) -> None:
        super().__init__()
        self.client, self.args, self.batch = client, args, batch
        self.cwd = ""
        self.failed: FtransferError | None = None
        self._listings: dict[str, list[Entry]] = {}
        self.prompt = "" if batch else self._prompt()
        self.doc_header = "Commands (help COMMAND for one):"

    def _prompt(self) -> str:
        return f"ftransfer {self.client.url.address}:/{self.cwd}> "

    # ---- running commands -------------------------------------------------------------

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            sys.stderr.write("ftransfer: interrupted\n")
            self.failed = FtransferError("interrupted")
        except _ArgumentError as exc:
            if str(exc):
                sys.stderr.write(f"ftransfer: {exc}\n")
            self.failed = UsageError(str(exc))
        except FtransferError as exc:
            sys.stderr.write(f"ftransfer: error: {exc}\n")
            self.failed = exc
        return self.batch and self.failed is not None  # a batch stops at a failure

    def precmd(self, line: str) -> str:
        self.failed = None
        if self.batch and line.strip():
            sys.stdout.write(f"ftransfer> {line}\n")  # (as sftp -b echoes)
        return line

    def postcmd(self, stop: bool, line: str) -> bool:
        if not self.batch:
            self.prompt = self._prompt()
        return stop

    def emptyline(self) -> bool:
        return False

    def default(self, line: str) -> None:
        raise _ArgumentError(f"{line.split()[0]}: unknown command (help lists them)")

    def do_EOF(self, line: str) -> bool:
        """Leave (Ctrl-D)."""
        if not self.batch:
            sys.stdout.write("\n")
        return True

    def do_exit(self, line: str) -> bool:
        """exit: leave the session"""
        return True

    do_quit = do_exit

    def _parse(self, name: str, line: str) -> argparse.Namespace:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise _ArgumentError(f"{name}: {exc}") from None
        return PARSERS[name].parse_args(words)

    def _words(self, name: str, line: str, count: range) -> list[str]:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise _ArgumentError(f"{name}: {exc}") from None
        if len(words) not in count:
            raise _ArgumentError(f"{name}: {self._usage(name)}")
        return words

    def _usage(self, name: str) -> str:
        doc = getattr(self, f"do_{name}").__doc__ or ""
        return "usage: " + doc.split(":")[0]

    def _changed(self) -> None:
        self._listings.clear()

    # ---- remote directory -------------------------------------------------------------

    def do_pwd(self, line: str) -> None:
        """pwd: the remote working directory"""
        self._words("pwd", line, range(1))
        print(f"/{self.cwd}")

    def do_cd(self, line: str) -> None:
        """cd [PATH]: change the remote working directory (no PATH: the root)"""
        words = self._words("cd", line, range(2))
        target = join(self.cwd, words[0]) if words else ""
        if target and not self.client.stat(target).is_dir:
            raise _ArgumentError(f"cd: {escape(target)}: not a directory")
        self.cwd = target

    def do_ls(self, line: str) -> None:
        """ls [-l] [PATH]: list a remote directory"""
        args = self._parse("ls", line)
        if len(args.operands) > 1:
            raise _ArgumentError("ls: one directory at a time")
        path = join(self.cwd, args.operands[0]) if args.operands else self.cwd
        entries = self._listing(path, fresh=True)
        if args.l:
            print_listing(entries, as_json=False)
        else:
            for entry in entries:
                slash = "/" if entry.kind is EntryKind.DIRECTORY else ""
                print(escape(entry.name) + slash)

    def do_stat(self, line: str) -> None:
        """stat PATH: type, size, mode, mtime and xxh3-128 of a remote name"""
        [path] = self._words("stat", line, range(1, 2))
        print_stat(path, self.client.stat(join(self.cwd, path)), as_json=False)

    def do_mkdir(self, line: str) -> None:
        """mkdir [-p] PATH: create a remote directory (-p: and its parents)"""
        args = self._parse("mkdir", line)
        if len(args.operands) != 1:
            raise _ArgumentError("mkdir: one PATH")
        self.client.mkdir(join(self.cwd, args.operands[0]), parents=args.p)
        self._changed()

    def do_rm(self, line: str) -> None:
        """rm PATH: remove a remote file or empty directory"""
        [path] = self._words("rm", line, range(1, 2))
        self.client.remove(join(self.cwd, path))
        self._changed()

    def do_mv(self, line: str) -> None:
        """mv OLD NEW: rename on the server (into NEW if it is a directory)"""
        old, new = self._words("mv", line, range(2, 3))
        self.client.move(join(self.cwd, old), join(self.cwd, new))
        self._changed()

    # ---- local directory --------------------------------------------------------------

    def do_lpwd(self, line: str) -> None:
        """lpwd: the local working directory"""
        print(os.getcwd())

    def do_lcd(self, line: str) -> None:
        """lcd [PATH]: change the local working directory (no PATH: home)"""
        words = self._words("lcd", line, range(2))
        target = os.path.expanduser(words[0] if words else "~")
        try:
            os.chdir(target)
        except OSError as exc:
            raise _ArgumentError(f"lcd: {target}: {exc.strerror}") from None

    def do_lls(self, line: str) -> None:
        """lls [PATH]: list a local directory"""
        words = self._words("lls", line, range(2))
        where = os.path.expanduser(words[0]) if words else "."
        try:
            names = sorted(os.listdir(where))
        except OSError as exc:
            raise _ArgumentError(f"lls: {where}: {exc.strerror}") from None
        for name in names:
            slash = "/" if os.path.isdir(os.path.join(where, name)) else ""
            print(escape(name) + slash)

    # ---- transfers ----------------------------------------------------------------------

    def do_get(self, line: str) -> None:
        """get [-r] [--no-clobber] [--update|--checksum] REMOTE... [LOCAL]: download"""
        args = self._parse("get", line)
        if not args.operands:
            raise _ArgumentError("get: REMOTE... [LOCAL]")
        remotes, local = args.operands, None
        if len(remotes) > 1:
            *remotes, local = remotes
        self._transfer(
            lambda bars: self.client.get_many(
                [join(self.cwd, r) for r in remotes],
                local,
                recursive=args.recursive,
                no_clobber=args.no_clobber,
                progress=bars,
                skip=args.skip,
            )
        )

    def do_put(self, line: str) -> None:
        """put [-r] [--no-clobber] [--update|--checksum] LOCAL... [REMOTE]: upload here"""
        args = self._parse("put", line)
        if not args.operands:
            raise _ArgumentError("put: LOCAL... [REMOTE]")
        sources, remote = args.operands, self.cwd + "/" if self.cwd else ""
        if len(sources) > 1 and not os.path.exists(sources[-1]):
            *sources, target = sources
            remote = join(self.cwd, target)
        self._transfer(
            lambda bars: self.client.put_many(
                sources,
                remote,
                recursive=args.recursive,
                no_clobber=args.no_clobber,
                progress=bars,
                skip=args.skip,
            )
        )
        self._changed()

    def _transfer(self, run: Callable[[Bars], object]) -> None:
        """A batch with the one-shot commands' bars and lines; its first failure."""
        from .commands import run_batch

        self.failed = run_batch(self.args, run)

    def do_sum(self, line: str) -> None:
        """sum LOCAL...: the xxh3-128 of local files, as the server's stat shows it"""
        from .tools import print_sums

        print_sums(self._words("sum", line, range(1, 1 << 16)))

    def do_ping(self, line: str) -> None:
        """ping [COUNT]: UDP echoes to this server (RTT and loss)"""
        words = self._words("ping", line, range(2))
        from .tools import ping

        url = self.client.url
        count = int(words[0]) if words and words[0].isdigit() else 4
        ping(
            argparse.Namespace(
                remote=f"{url.host}:{url.port}", count=count, interval=0.2, timeout=1.0
            )
        )

    # ---- completion ---------------------------------------------------------------------

    def completenames(self, text: str, *ignored: object) -> list[str]:
        return [name + " " for name in COMMANDS if name.startswith(text)]

    def _listing(self, path: str, *, fresh: bool = False) -> list[Entry]:
        if fresh or path not in self._listings:
            self._listings[path] = self.client.list(path)
        return self._listings[path]

    def _complete_remote(self, text: str) -> list[str]:
        directory, _, leaf = text.rpartition("/")
        try:
            entries = self._listing(join(self.cwd, directory) if directory else self.cwd)
        except (FtransferError, KeyboardInterrupt):
            return []
        prefix = f"{directory}/" if directory else ""
        return [
            prefix + e.name + ("/" if e.kind is EntryKind.DIRECTORY else "")
            for e in entries
            if e.name.startswith(leaf)
        ]

    @staticmethod
    def _complete_local(text: str) -> list[str]:
        directory, _, leaf = text.rpartition("/")
        try:
            names = os.listdir(os.path.expanduser(directory) if directory else ".")
        except OSError:
            return []
        prefix = f"{directory}/" if directory else ""
        out = []
        for name in sorted(names):
            if name.startswith(leaf):
                slash = "/" if os.path.isdir(os.path.join(directory or ".", name)) else ""
                out.append(prefix + name + slash)
        return out

    def completedefault(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        command = line.split()[0] if line.split() else ""
        local = command in ("put", "lcd", "lls", "sum")
        return self._complete_local(text) if local else self._complete_remote(text)


@contextlib.contextmanager
def _history() -> Iterator[None]:
    """readline's history of earlier sessions (lftp keeps one too), and names with
    '/' completed whole."""
    try:
        import readline
    except ImportError:  # (no readline: plain input, no history)
        yield
        return
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    path = os.path.join(state, "ftransfer", "shell_history")
    readline.set_completer_delims(" \t\n")
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    try:
        yield
    finally:
        readline.set_history_length(HISTORY_LINES)
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            readline.write_history_file(path)


def run(args: argparse.Namespace, client: Client) -> int:
    """The session: interactive, or the batch file's commands."""
    batch_file = getattr(args, "batch", None)
    if batch_file is None:
        shell = Shell(client, args, batch=False)
        intro: str | None = f"connected to {client.url.address}; help lists the commands"
        with _history():
            while True:
                try:
                    shell.cmdloop(intro)
                    return 0
                except KeyboardInterrupt:  # at the prompt: a new line, as a shell does
                    sys.stdout.write("^C\n")
                    intro = None
    lines: Iterable[str]
    if batch_file == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(batch_file, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except OSError as exc:
            raise UsageError(f"-b {batch_file}: {exc.strerror}") from None
    shell = Shell(client, args, batch=True)
    for line in lines:
        if line.strip().startswith("#"):
            continue
        stop = shell.onecmd(shell.precmd(line))
        if shell.failed is not None:
            return int(shell.failed.exit_code) or 1
        if stop:
            break
    return 0
