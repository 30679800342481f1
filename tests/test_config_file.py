"""The config file (cli/config_file.py): defaults, host aliases, [serve], and the
errors a bad file gets; the real CLI against the real server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ServerProcess, run_cli

from ftransfer.cli import config_file
from ftransfer.cli import parser as grammar
from ftransfer.errors import ExitCode, UsageError


def write_config(text: str) -> Path:
    """The config file this test's processes read ($XDG_CONFIG_HOME is the test's)."""
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "ftransfer" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_list_of_client_options_is_what_the_commands_take() -> None:
    _parser, commands = grammar.build(None)
    taken = {
        option[2:]
        for name in config_file.CLIENT_COMMANDS
        for action in commands[name]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert taken == config_file.CLIENT_OPTIONS


def test_an_alias_fills_in_what_the_remote_leaves_out(tmp_path: Path) -> None:
    path = write_config(
        '[hosts.files]\nhost = "files.example"\nuser = "alice"\nport = 9100\ntransport = "udp"\n'
    )
    config = config_file.load(str(path))
    assert config is not None
    assert config_file.aliased("files/a.bin", config) == "udp://alice@files.example:9100/a.bin"
    assert config_file.aliased("bob@files:7/a", config) == "udp://bob@files.example:7/a"
    assert config_file.aliased("tcp://files/", config) == "tcp://alice@files.example:9100/"
    assert config_file.aliased("other/a.bin", config) == "other/a.bin"  # not an alias
    assert config_file.aliased("files/a", None) == "files/a"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults\n", "Expected ']'"),
        ("[extra]\n", "unknown section [extra]"),
        ('[hosts.x]\nport = "x"\n', "[hosts.x] port: must be a number"),
        ('[hosts.x]\ntransport = "sctp"\n', "[hosts.x] transport: must be one of tcp, udp, tftp"),
        ("[defaults]\nnosuch = 1\n", "[defaults] nosuch: no such option"),
        ('[defaults]\nlimit-rate = "fast"\n', "[defaults] limit-rate: not a size"),
        ('[defaults]\ncc = "cubic"\n', "[defaults] cc: must be one of bbr, reno"),
        ('[defaults]\nquiet = "yes"\n', "[defaults] quiet: must be true or false"),
    ],
)
def test_a_bad_file_is_a_usage_error_that_names_it(
    server: ServerProcess, tmp_path: Path, text: str, message: str
) -> None:
    path = write_config(text)
    got = run_cli("get", server.remote("x"), str(tmp_path / "x"))
    assert got.returncode == ExitCode.USAGE
    assert str(path).encode() in got.stderr and message.encode() in got.stderr, got.stderr


def test_defaults_and_a_hosts_options_apply_and_the_command_line_wins(
    server: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    write_config(
        "[defaults]\njson = true\nrecursive = true\n\n"  # (--recursive: not ls's; left out there)
        f'[hosts.box]\nhost = "127.0.0.1"\nport = {server.port}\ntransport = "udp"\n'
        'fingerprint = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"\n'
    )
    # the host's pinned fingerprint is wrong: refused, as the file says
    refused = run_cli("put", str(tmp_path / "a.txt"), "box/a.txt")
    assert refused.returncode == ExitCode.HOST_KEY, refused.stderr
    # the command line's fingerprint wins; [defaults] json and the host's udp apply
    put = run_cli("put", "--fingerprint", server.fingerprint, str(tmp_path / "a.txt"), "box/a.txt")
    assert put.returncode == 0, put.stderr
    [record] = [json.loads(line) for line in put.stdout.splitlines()]
    assert record["transport"] == "udp" and record["bytes"] == 5
    assert (server.root / "a.txt").read_bytes() == b"hello"
    # an explicit scheme wins over the host's transport
    listed = run_cli("ls", "--fingerprint", server.fingerprint, "tcp://box/")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["a.txt"]


def test_ftransfer_config_names_another_file(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere.toml"
    other.write_text("[defaults]\njson = true\n")
    monkeypatch.setenv("FTRANSFER_CONFIG", str(other))
    listed = run_cli("stat", server.remote(""))
    assert listed.returncode == 0 and json.loads(listed.stdout)["type"] == "directory"


def test_a_serve_section_configures_the_server(served: Path, tmp_path: Path) -> None:
    write_config("[serve]\nread-only = true\n")
    proc = ServerProcess(served, log=tmp_path / "server.log")
    try:
        (tmp_path / "a.txt").write_bytes(b"x")
        put = run_cli("put", str(tmp_path / "a.txt"), proc.remote("a.txt"))
        assert put.returncode == ExitCode.REFUSED and b"read-only" in put.stderr
    finally:
        assert proc.stop() == 0


def test_no_file_is_no_config(tmp_path: Path) -> None:
    assert config_file.load(str(tmp_path / "none.toml")) is None
    with pytest.raises(UsageError, match="must be a table"):
        config_file.ConfigFile("f.toml", {"defaults": 3})
