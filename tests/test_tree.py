"""Recursive plans (client/tree.py) and get_many's rules, without sockets: the local
walk on a real temporary tree, the remote walk and patterns against a scripted
server, including a hostile one."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from ftransfer.client import ClientConfig, TransferResult, Url
from ftransfer.client import tree as tree_module
from ftransfer.client.calls import Calls, Request, into_directory
from ftransfer.client.drive import drive
from ftransfer.client.result import Progress, Stat
from ftransfer.client.tcp import DownloadJob
from ftransfer.client.tree import (
    expand,
    has_magic,
    local_tree,
    make_local_directory,
    remote_tree,
    set_directory_times,
)
from ftransfer.errors import FtransferError, NotADirectory, NotFound, RemoteProtocolError
from ftransfer.storage.entry import Entry, EntryKind

SERVER = "files.example:9021"


def entry(name: str, kind: EntryKind = EntryKind.FILE, size: int = 3, mtime_ns: int = 7) -> Entry:
    return Entry(name=name, kind=kind, size=size, mtime_ns=mtime_ns)


DIR = EntryKind.DIRECTORY


class ScriptedServer:
    """Listings by directory, as a server would answer LIST (no sockets)."""

    def __init__(self, listings: dict[str, list[Entry]]) -> None:
        self.listings = listings
        self.listed: list[str] = []

    def listing(self, path: str) -> Generator[Request, object, list[Entry]]:
        self.listed.append(path)
        if path not in self.listings:
            raise NotFound(f"{SERVER}: {path}: No such file or directory")
        return self.listings[path]
        yield  # (a generator, as Calls.listing is)


def triples(plan: tree_module.Tree) -> tuple[tuple[str, str, int], ...]:
    return tuple((file.source, file.target, file.size) for file in plan.files)


def run(gen: Generator[Request, object, object]) -> object:
    return drive(gen, lambda request: pytest.fail(f"no request expected, got {request}"))


# ---- the local walk ---------------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "x.txt").write_bytes(b"xx")
    (root / "a" / "b" / "y.sh").write_bytes(b"yyy")
    (root / "z.bin").write_bytes(b"z")
    (root / "a" / "link").symlink_to("x.txt")
    (root / "dirlink").symlink_to("a")
    os.mkfifo(root / "fifo")


def test_a_local_tree_is_planned_parents_first_in_name_order(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    plan = local_tree(str(tmp_path / "src"), "up")
    assert [d for d, _ in plan.directories] == ["up", "up/a", "up/a/b", "up/empty"]
    src = str(tmp_path / "src")
    assert triples(plan) == (
        (f"{src}/a/b/y.sh", "up/a/b/y.sh", 3),
        (f"{src}/a/x.txt", "up/a/x.txt", 2),
        (f"{src}/z.bin", "up/z.bin", 1),
    )
    assert plan.total_bytes == 6
    # symlinks (to files and to directories) and the FIFO: one warning each, never followed
    assert len(plan.skipped) == 3
    assert any("a/link: a symbolic link, skipped" in line for line in plan.skipped)
    assert any("dirlink: a symbolic link, skipped" in line for line in plan.skipped)
    assert any("fifo: not a regular file, skipped" in line for line in plan.skipped)
    assert plan.failures == ()


def test_depth_and_entry_counts_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / "src" / "1" / "2" / "3"
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"f")
    monkeypatch.setattr(tree_module, "MAX_TREE_DEPTH", 3)
    plan = local_tree(str(tmp_path / "src"), "t")
    assert [d for d, _ in plan.directories] == ["t", "t/1", "t/1/2"]
    assert plan.files == () and "deeper than 3 levels" in plan.skipped[0]
    monkeypatch.setattr(tree_module, "MAX_TREE_ENTRIES", 2)
    with pytest.raises(FtransferError, match="more than 2 entries"):
        local_tree(str(tmp_path / "src"), "t")


def test_a_vanished_directory_is_a_failure_and_the_rest_goes_on(tmp_path: Path) -> None:
    plan = local_tree(str(tmp_path / "gone"), "t")
    assert [type(f) for f in plan.failures] == [NotADirectory]
    assert "local" in str(plan.failures[0])


# ---- the remote walk -----------------------------------------------------------------


def test_a_remote_tree_is_walked_depth_first_with_the_servers_times() -> None:
    server = ScriptedServer(
        {
            "logs": [entry("a", DIR, 0, 11), entry("b.gz"), entry("ln", EntryKind.SYMLINK)],
            "logs/a": [entry("c.gz", size=5), entry("e", DIR, 0, 12)],
            "logs/a/e": [],
        }
    )
    plan = run(remote_tree(server.listing, SERVER, "logs/", "here", 10))
    assert isinstance(plan, tree_module.Tree)
    sep = os.sep
    assert plan.directories == (
        ("here", 10),
        (f"here{sep}a", 11),
        (f"here{sep}a{sep}e", 12),
    )
    assert triples(plan) == (
        ("logs/b.gz", f"here{sep}b.gz", 3),
        ("logs/a/c.gz", f"here{sep}a{sep}c.gz", 5),
    )
    assert plan.skipped == (f"{SERVER}: logs/ln: a symbolic link, skipped",)
    assert server.listed == ["logs", "logs/a", "logs/a/e"]


@pytest.mark.parametrize("hostile", ["..", ".", "../../etc", "a/b", "", "x\x00y", "a\\b", "/etc"])
def test_a_name_no_server_may_send_is_refused_and_never_becomes_a_path(hostile: str) -> None:
    server = ScriptedServer(
        {"d": [entry(hostile), entry(hostile, DIR), entry("fine")], hostile: [entry("x")]}
    )
    plan = run(remote_tree(server.listing, SERVER, "d", "here", -1))
    assert isinstance(plan, tree_module.Tree)
    assert triples(plan) == (("d/fine", os.path.join("here", "fine"), 3),)
    assert plan.directories == (("here", -1),)
    assert len(plan.failures) == 2
    assert all(isinstance(f, RemoteProtocolError) for f in plan.failures)
    assert all("a name no server may send" in str(f) for f in plan.failures)


def test_an_endless_remote_tree_ends_at_the_depth_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree_module, "MAX_TREE_DEPTH", 5)

    class Endless(ScriptedServer):
        def listing(self, path: str) -> Generator[Request, object, list[Entry]]:
            self.listed.append(path)
            return [entry("deeper", DIR)]
            yield

    server = Endless({})
    plan = run(remote_tree(server.listing, SERVER, "d", "here", -1))
    assert isinstance(plan, tree_module.Tree)
    assert len(server.listed) == 5 and len(plan.directories) == 5
    assert "too deep, skipped" in plan.skipped[0]


def test_a_directory_that_cannot_be_listed_is_a_failure_of_its_own() -> None:
    server = ScriptedServer({"d": [entry("gone", DIR), entry("f")]})
    plan = run(remote_tree(server.listing, SERVER, "d", "here", -1))
    assert isinstance(plan, tree_module.Tree)
    assert [type(f) for f in plan.failures] == [NotFound]
    assert [file.target for file in plan.files] == [os.path.join("here", "f")]


# ---- patterns ---------------------------------------------------------------------------


GLOBBED = {
    "": [entry("logs", DIR), entry("top.gz")],
    "logs": [entry(".hidden.gz"), entry("a.gz"), entry("b.txt"), entry("old", DIR)],
    "logs/old": [entry("c.gz")],
}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("logs/*.gz", ["logs/a.gz"]),  # a wildcard does not match a leading dot
        ("logs/.*.gz", ["logs/.hidden.gz"]),
        ("logs/[ab].*", ["logs/a.gz", "logs/b.txt"]),
        ("*/old/*", ["logs/old/c.gz"]),
        ("*/old", ["logs/old"]),  # a literal last component after a wildcard
        ("*.gz", ["top.gz"]),
        ("log?/o*", ["logs/old"]),
    ],
)
def test_patterns_expand_like_a_shell(pattern: str, expected: list[str]) -> None:
    found = run(expand(ScriptedServer(GLOBBED).listing, SERVER, pattern))
    assert isinstance(found, list)
    assert [e.name for e in found] == expected


def test_a_pattern_that_matches_nothing_is_not_found() -> None:
    with pytest.raises(NotFound, match=r"logs/\*\.zip: no match"):
        run(expand(ScriptedServer(GLOBBED).listing, SERVER, "logs/*.zip"))
    assert has_magic("a*") and has_magic("a?") and has_magic("[ab]") and not has_magic("a.b")


# ---- local directories -----------------------------------------------------------------


def test_a_download_never_makes_a_directory_through_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert make_local_directory(str(tmp_path / "new")) is None and (tmp_path / "new").is_dir()
    assert make_local_directory(str(tmp_path / "real")) is None  # existing: fine
    for blocked in ("file", "link"):
        failure = make_local_directory(str(tmp_path / blocked))
        assert isinstance(failure, NotADirectory) and "not followed" in str(failure)
    assert isinstance(make_local_directory(str(tmp_path / "no" / "parent")), NotADirectory)


def test_directory_times_are_set_deepest_first(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    set_directory_times(((str(tmp_path / "a"), 10**18), (str(tmp_path / "a" / "b"), 2 * 10**18)))
    assert (tmp_path / "a").stat().st_mtime_ns == 10**18
    assert (tmp_path / "a" / "b").stat().st_mtime_ns == 2 * 10**18


def test_where_downloads_go(tmp_path: Path) -> None:
    assert into_directory(["a"], None) and into_directory(["a"], "")
    assert into_directory(["a", "b"], "new") and into_directory(["*.gz"], "new")
    assert into_directory(["a"], "new/") and into_directory(["a"], str(tmp_path))
    assert not into_directory(["a"], "new")


# ---- get_many against a hostile server, above the transport -------------------------


class HostileCalls(Calls):
    """Calls whose server answers from a script: its listings, its stats, and the
    downloads it would send (written by the real sinks the plan makes)."""

    def __init__(self, listings: dict[str, list[Entry]], root: Entry) -> None:
        super().__init__(Url(scheme="tcp", host="files.example", port=9021), ClientConfig())
        self.server = ScriptedServer(listings)
        self.root = root
        self.jobs: list[DownloadJob] = []

    def listing(self, path: str) -> Generator[Request, object, list[Entry]]:
        return (yield from self.server.listing(path))

    def stat(self, path: str) -> Generator[Request, object, Stat]:
        return Stat(entry=self.root, digest=None)
        yield

    def _tcp_downloads(
        self, jobs: list[DownloadJob], progress: Progress | None
    ) -> Generator[Request, object, list[TransferResult | FtransferError]]:
        self.jobs.extend(jobs)
        return []
        yield


def test_get_r_from_a_hostile_server_writes_nothing_outside_its_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "d").mkdir()
    (target / "d" / "sub").symlink_to(outside)  # planted: a directory the server names
    calls = HostileCalls(
        {
            "d": [entry(".."), entry("../x"), entry("sub", DIR), entry("ok")],
            "d/sub": [entry("evil")],
        },
        root=entry("d", DIR),
    )
    monkeypatch.chdir(tmp_path)
    skipped: list[str] = []

    class Seen(Progress):
        def skipped(self, message: str) -> None:
            skipped.append(message)

    outcomes = run(
        calls.get_many(["d"], "target", recursive=True, no_clobber=False, progress=Seen())
    )
    assert isinstance(outcomes, list)
    # two refused names and the directory that is a symlink here; only "ok" is fetched
    assert len(outcomes) == 3 and all(isinstance(o, FtransferError) for o in outcomes)
    assert [job.local for job in calls.jobs] == [os.path.join("target", "d", "ok")]
    assert list(outside.iterdir()) == []


def test_a_directory_without_recursive_is_refused_with_a_hint() -> None:
    calls = HostileCalls({}, root=entry("d", DIR))
    outcomes = run(calls.get_many(["d"], None, recursive=False, no_clobber=False, progress=None))
    assert isinstance(outcomes, list)
    [refusal] = outcomes
    assert isinstance(refusal, FtransferError) and "is a directory (use -r)" in str(refusal)
    assert calls.jobs == []


def test_a_pattern_never_matches_a_name_no_server_may_send(tmp_path: Path) -> None:
    """``.*`` would match a listed ``..``: a hostile server's way out of the target."""
    calls = HostileCalls(
        {
            "": [entry("..", DIR), entry(".ok"), entry("a\\b"), entry("x\x1by")],
            "..": [entry("evil")],
        },
        root=entry("", DIR),
    )
    found = run(expand(calls.server.listing, SERVER, ".*"))
    assert isinstance(found, list) and [e.name for e in found] == [".ok"]
    with pytest.raises(NotFound):  # (a\\b and x<ESC>y are refused, .ok is hidden)
        run(expand(calls.server.listing, SERVER, "*"))
