"""The config file: defaults for any option, and host aliases, as ~/.ssh/config.

Theory of operation
-------------------
``$XDG_CONFIG_HOME/ftransfer/config.toml`` (``~/.config/...``; ``$FTRANSFER_CONFIG``
names another file) is read with ``tomllib`` only when it exists, so a machine
without one pays nothing at start-up::

    [defaults]              # any client option, by its long name
    limit-rate = "20M"
    timeout = 30

    [hosts.files]           # `ftransfer get files/a.bin .` means this server
    host = "files.example.com"
    user = "alice"
    port = 9021
    transport = "udp"       # tcp, udp or tftp
    fingerprint = "SHA256:..."
    checksum = true         # and any option, for this host only

    [serve]                 # any `serve` option
    max-rate = "100M"

Options on the command line win over a host's section, which wins over
``[defaults]``. A value is checked by the option's own argparse type, so a bad
one is refused with the file, the section and the option named (exit 2), as
unknown options and sections are. A host alias fills in what the REMOTE leaves
out: its host name, user, port and transport (``bob@files`` keeps bob, an
explicit ``:PORT`` or ``udp://`` wins).

How: the command line is parsed once to learn the command and its REMOTE; the
matching sections become the command parser's defaults (argparse converts them
with each option's type and lets the command line override them); then it is
parsed again.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

from ..errors import UsageError

CLIENT_COMMANDS = frozenset({"put", "get", "ls", "stat", "rm", "mkdir", "mv", "shell"})
"""The commands [defaults] and a host's options apply to (``ping`` takes only a
host's address: its --timeout means another thing)."""
CLIENT_OPTIONS = frozenset(
    {
        *("blksize", "ca", "cc", "checksum", "chunk", "fingerprint", "give-up", "insecure"),
        *("json", "known-hosts", "limit-rate", "netascii", "no-clobber", "no-resume"),
        "parents",
        *("password-file", "quiet", "recursive", "strict-host-keys", "tcp-port", "timeout"),
        *("udp", "update", "verbose", "windowsize", "batch", "transport"),
    }
)
"""Every long option of the client commands (a test keeps it true): one of them
that a command does not take is left out for that command (--recursive for ls),
any other name is a mistake in the file."""
HOST_KEYS = frozenset({"host", "user", "port", "transport"})
TRANSPORTS = ("tcp", "udp", "tftp")


def config_path() -> str:
    explicit = os.environ.get("FTRANSFER_CONFIG")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "ftransfer", "config.toml")


class ConfigFile:
    """A parsed config file: its sections, checked for shape."""

    def __init__(self, path: str, data: Mapping[str, object]) -> None:
        self.path = path
        unknown = set(data) - {"defaults", "hosts", "serve"}
        if unknown:
            raise UsageError(f"{path}: unknown section [{sorted(unknown)[0]}]")
        self.defaults = _table(path, "defaults", data.get("defaults", {}))
        self.serve = _table(path, "serve", data.get("serve", {}))
        hosts = _table(path, "hosts", data.get("hosts", {}))
        self.hosts = {name: _table(path, f"hosts.{name}", table) for name, table in hosts.items()}
        for name, table in self.hosts.items():
            _check_host(path, name, table)


def _table(path: str, name: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise UsageError(f"{path}: [{name}] must be a table")
    return value


def _check_host(path: str, name: str, table: Mapping[str, object]) -> None:
    where = f"{path}: [hosts.{name}]"
    for key in ("host", "user"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise UsageError(f"{where} {key}: must be a non-empty string")
    port = table.get("port")
    if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
        raise UsageError(f"{where} port: must be a number from 1 to 65535")
    transport = table.get("transport")
    if transport is not None and transport not in TRANSPORTS:
        raise UsageError(f"{where} transport: must be one of {', '.join(TRANSPORTS)}")


def load(path: str | None = None) -> ConfigFile | None:
    """The config file, or None if there is none."""
    path = path or config_path()
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    import tomllib

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    return ConfigFile(path, data)


# ---- applying it --------------------------------------------------------------------


def remote_text(command: str, args: argparse.Namespace) -> str | None:
    """The REMOTE operand that names the server, if the command has one."""
    if command == "put":
        paths = getattr(args, "paths", [])
        return str(paths[-1]) if len(paths) >= 2 else None
    if command == "get":
        paths = getattr(args, "paths", [])
        return str(paths[0]) if paths else None
    remote = getattr(args, "remote", None)
    return str(remote) if remote is not None else None


def alias_of(text: str, config: ConfigFile) -> str | None:
    """The host alias a REMOTE names, if any."""
    from ..client.urls import parse_url

    try:
        host = parse_url(text).host
    except ValueError:
        return None  # (the command reports it)
    return host if host in config.hosts else None


def apply_defaults(
    parser: argparse.ArgumentParser, config: ConfigFile, sections: Sequence[str]
) -> None:
    """Make the named sections' options the parser's defaults (later ones win)."""
    by_option = {
        option[2:]: action
        for action in parser._actions  # (argparse has no public list of them)
        for option in action.option_strings
        if option.startswith("--")
    }
    defaults: dict[str, object] = {}
    for section in sections:
        table = _section(config, section)
        for key, value in table.items():
            if section.startswith("hosts.") and key in HOST_KEYS:
                continue
            action = by_option.get(key)
            if action is None:
                if section != "serve" and key in CLIENT_OPTIONS:
                    continue  # another command's option
                raise UsageError(f"{config.path}: [{section}] {key}: no such option")
            defaults[action.dest] = _value(config.path, section, key, action, value)
    parser.set_defaults(**defaults)


def _section(config: ConfigFile, section: str) -> Mapping[str, object]:
    if section == "defaults":
        return config.defaults
    if section == "serve":
        return config.serve
    return config.hosts[section.removeprefix("hosts.")]


def _value(path: str, section: str, key: str, action: argparse.Action, value: object) -> object:
    where = f"{path}: [{section}] {key}"
    if action.nargs == 0:  # a flag: store_true, store_const
        if not isinstance(value, bool):
            raise UsageError(f"{where}: must be true or false")
        if isinstance(action, argparse._StoreTrueAction):
            return value
        if value is False:
            return action.default
        return action.const
    text = str(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise UsageError(f"{where}: {exc or 'invalid value'}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{where}: must be one of {choices}")
    return converted


def aliased(text: str, config: ConfigFile | None) -> str:
    """A REMOTE with its host alias filled in (host, user, port, transport); the
    REMOTE's own user, port and scheme win."""
    if config is None:
        return text
    from ..client.urls import explicit_port, format_address, parse_url

    alias = alias_of(text, config)
    if alias is None:
        return text
    table = config.hosts[alias]
    url = parse_url(text)
    scheme = url.scheme if "://" in text else str(table.get("transport", url.scheme))
    port = url.port if explicit_port(text) else table.get("port")
    user = url.user or str(table.get("user", ""))
    host = str(table.get("host", alias))
    if port is None:
        address = f"[{host}]" if ":" in host else host
    else:
        address = format_address(host, int(str(port)))
    who = f"{user}@" if user else ""
    return f"{scheme}://{who}{address}/{url.path}"
