"""Users: permissions, names, scrypt hashes, the users file, lockout and logging in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ftransfer.errors import UsageError
from ftransfer.server.users import (
    FAILED_MESSAGE,
    Authenticator,
    Lockout,
    Permissions,
    User,
    Verdict,
    check_user_name,
    dummy_hash,
    hash_password,
    load_users,
    save_users,
    verify_password,
)

FAST = 10
"""scrypt's smallest accepted log N: a hash in about a millisecond."""
HASH = hash_password("secret", log_n=FAST)
RWD = Permissions(read=True, write=True, delete=True)


def user(name: str = "alice", root: str = "", perms: str = "rwd") -> User:
    return User(name=name, password_hash=HASH, root=root, permissions=Permissions.parse(perms))


# -- permissions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("", Permissions(), ""),
        ("r", Permissions(read=True), "r"),
        ("w", Permissions(write=True), "w"),
        ("d", Permissions(delete=True), "d"),
        ("rw", Permissions(read=True, write=True), "rw"),
        ("wr", Permissions(read=True, write=True), "rw"),
        ("dr", Permissions(read=True, delete=True), "rd"),
        ("rwd", RWD, "rwd"),
        ("dwr", RWD, "rwd"),
    ],
)
def test_permissions_parse_and_text(text: str, expected: Permissions, canonical: str) -> None:
    parsed = Permissions.parse(text)
    assert parsed == expected
    assert parsed.text == canonical
    assert Permissions.parse(parsed.text) == parsed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x", "not one of"),
        ("R", "not one of"),
        ("rr", "twice"),
        ("rwdr", "twice"),
        (" r", "not one of"),
    ],
)
def test_bad_permissions_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Permissions.parse(text)


# -- user names --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "alice", "Bob_2", "x.y-z", "_", "0", "a" * 64, "a."])
def test_good_user_names(name: str) -> None:
    check_user_name(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "1 to 64"),
        ("a" * 65, "1 to 64"),
        (".hidden", "cannot start"),
        ("-rf", "cannot start"),
        ("a b", "only the characters"),
        ("a:b", "only the characters"),
        ("a/b", "only the characters"),
        ("caf\u00e9", "only the characters"),
        ("a\n", "only the characters"),
    ],
)
def test_bad_user_names_are_refused_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        check_user_name(name)


# -- password hashes ---------------------------------------------------------------


def test_hash_has_the_documented_format() -> None:
    encoded = hash_password("pw", salt=b"0123456789abcdef", log_n=FAST, r=2, p=3)
    empty, scheme, parameters, salt, key = encoded.split("$")
    assert (empty, scheme, parameters) == ("", "scrypt", "ln=10,r=2,p=3")
    assert salt == "MDEyMzQ1Njc4OWFiY2RlZg"  # base64 of the salt, no padding
    assert len(key) == 43 and "=" not in key  # 32 bytes
    assert ":" not in encoded


def test_default_parameters_round_trip() -> None:
    encoded = hash_password("correct horse")
    assert encoded.startswith("$scrypt$ln=14,r=8,p=1$")
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)


def test_round_trip_and_wrong_passwords() -> None:
    assert verify_password("secret", HASH)
    for wrong in ["", "Secret", "secret ", "secre"]:
        assert not verify_password(wrong, HASH)


def test_unicode_passwords_including_lone_surrogates() -> None:
    encoded = hash_password("p\u00e4ss\udc80", log_n=FAST)
    assert verify_password("p\u00e4ss\udc80", encoded)
    assert not verify_password("p\u00e4ss", encoded)


def test_hashes_differ_by_salt_and_a_given_salt_is_deterministic() -> None:
    assert hash_password("pw", log_n=FAST) != hash_password("pw", log_n=FAST)
    salt = bytes(range(16))
    assert hash_password("pw", salt=salt, log_n=FAST) == hash_password("pw", salt=salt, log_n=FAST)


def _with(field: int, value: str) -> str:
    parts = HASH.split("$")
    parts[field] = value
    return "$".join(parts)


MALFORMED = [
    "",
    "secret",
    "$",
    "$scrypt$",
    HASH[1:],
    HASH + "$",
    "x" + HASH,
    HASH.replace("scrypt", "bcrypt"),
    _with(2, "ln=40,r=8,p=1"),  # about a terabyte: refused before scrypt
    _with(2, "ln=99,r=8,p=1"),
    _with(2, "ln=99999999999999999999,r=8,p=1"),
    _with(2, "ln=21,r=8,p=1"),
    _with(2, "ln=9,r=8,p=1"),
    _with(2, "ln=20,r=16,p=1"),  # 2 GiB
    _with(2, "ln=10,r=0,p=1"),
    _with(2, "ln=10,r=17,p=1"),
    _with(2, "ln=10,r=8,p=0"),
    _with(2, "ln=10,r=8,p=5"),
    _with(2, "ln=10,r=8"),
    _with(2, "ln=10,r=8,p=1,q=2"),
    _with(2, "r=8,ln=10,p=1"),
    _with(2, "ln=+10,r=8,p=1"),
    _with(2, "ln= 10,r=8,p=1"),
    _with(2, "ln=\u0661\u0660,r=8,p=1"),  # Arabic-Indic digits
    _with(3, ""),  # no salt
    _with(3, "not base64!"),
    _with(3, "A"),  # impossible length
    _with(4, ""),
    _with(4, HASH.split("$")[4][:-4]),  # a short key
    _with(4, HASH.split("$")[4] + "AAAA"),  # a long key
    _with(4, "\u00e9" * 43),
]


@pytest.mark.parametrize("encoded", MALFORMED)
def test_malformed_or_unsupported_hashes_are_false_never_an_exception(encoded: str) -> None:
    assert not verify_password("secret", encoded)


@pytest.mark.parametrize(
    "kwargs",
    [{"log_n": 9}, {"log_n": 21}, {"r": 0}, {"r": 17}, {"p": 0}, {"p": 5}, {"salt": b""}],
)
def test_hash_password_refuses_unsupported_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        hash_password("pw", **kwargs)  # type: ignore[arg-type]


def test_dummy_hash_is_made_once_with_the_default_parameters() -> None:
    assert dummy_hash() is dummy_hash()
    assert dummy_hash().startswith("$scrypt$ln=14,r=8,p=1$")
    assert not verify_password("", dummy_hash())


# -- the users file ----------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "users")
    users = {
        "alice": user("alice", "projects/alice", "rwd"),
        "guest": user("guest", "", "r"),
        "nobody": user("nobody", "odd:name/x", ""),
    }
    save_users(path, users)
    loaded = load_users(path)
    assert loaded == users
    assert list(loaded) == ["alice", "guest", "nobody"]
    text = Path(path).read_text()
    assert text.startswith("# ")
    assert f"alice:{HASH}:projects/alice:rwd\n" in text
    assert f"guest:{HASH}::r\n" in text
    assert f"nobody:{HASH}:odd:name/x:\n" in text


def test_saved_file_has_mode_0600_even_over_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("")
    path.chmod(0o644)
    save_users(str(path), {"alice": user()})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["users"]  # no temporary left behind


def test_save_then_load_an_empty_table(tmp_path: Path) -> None:
    path = str(tmp_path / "users")
    save_users(path, {})
    assert load_users(path) == {}


def test_comments_blank_lines_and_crlf_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(
        f"# a comment\n\n   \n  # indented comment\nalice:{HASH}:a/b/:wr\r\nbob:{HASH}::\n"
    )
    users = load_users(str(path))
    assert users == {"alice": user("alice", "a/b", "rw"), "bob": user("bob", "", "")}


def test_a_missing_file_is_an_error_unless_missing_ok(tmp_path: Path) -> None:
    path = str(tmp_path / "absent")
    with pytest.raises(UsageError, match="no such users file"):
        load_users(path)
    assert load_users(path, missing_ok=True) == {}


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"caf\xe9:x::r\n")
    with pytest.raises(UsageError, match="not valid UTF-8"):
        load_users(str(path))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("alice", "expected NAME:HASH:ROOT:PERMS"),
        (f"alice:{HASH}", "expected NAME:HASH:ROOT:PERMS"),
        (f"alice:{HASH}:rw", "expected NAME:HASH:ROOT:PERMS"),
        (f"-alice:{HASH}::rw", "cannot start"),
        (f":{HASH}::rw", "1 to 64"),
        ("alice:plaintext::rw", "not a supported scrypt hash"),
        (f"alice:{HASH.replace('ln=10', 'ln=30')}::rw", "not a supported scrypt hash"),
        (f"alice:{HASH}:../up:rw", "root: .*not allowed"),
        (f"alice:{HASH}:a/../b:rw", "root: .*not allowed"),
        (f"alice:{HASH}:/etc:rw", "root: .*absolute"),
        (f"alice:{HASH}:a//b:rw", "root: .*not allowed"),
        (f"alice:{HASH}::rwx", "not one of"),
        (f"alice:{HASH}::rr", "twice"),
    ],
)
def test_errors_in_the_file_name_the_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "users"
    path.write_text(f"# header\n\nbob:{HASH}::r\n{line}\n")
    with pytest.raises(UsageError, match=f"^{path}:4: .*{reason}") as caught:
        load_users(str(path))
    assert HASH not in str(caught.value)


def test_a_duplicate_user_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:{HASH}::r\nbob:{HASH}::r\nalice:{HASH}::rw\n")
    with pytest.raises(UsageError, match=f"^{path}:3: user alice already on line 1"):
        load_users(str(path))


@pytest.mark.parametrize(
    ("users", "reason"),
    [
        ({"bob": user("alice")}, "another name"),
        ({"a b": user("a b")}, "only the characters"),
        ({"alice": user("alice", "../x")}, "root"),
        ({"alice": User(name="alice", password_hash="pw", root="", permissions=RWD)}, "hash"),
    ],
)
def test_save_refuses_what_could_not_be_read_back(
    tmp_path: Path, users: dict[str, User], reason: str
) -> None:
    path = tmp_path / "users"
    with pytest.raises(UsageError, match=reason):
        save_users(str(path), users)
    assert not path.exists()


def test_save_into_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write"):
        save_users(str(tmp_path / "absent" / "users"), {"alice": user()})


def test_the_repr_of_a_user_hides_the_hash() -> None:
    alice = user()
    for text in (repr(alice), str(alice), repr(Verdict(user=alice, answer_at=0.0))):
        assert HASH not in text
        assert "<hidden>" in text
        assert "alice" in text


# -- lockout -----------------------------------------------------------------------


def test_five_failures_lock_the_address_for_lock_s() -> None:
    lockout = Lockout(max_failures=5, window_s=600.0, lock_s=300.0)
    for second in range(4):
        lockout.failed("10.0.0.1", 100.0 + second)
        assert lockout.locked_for("10.0.0.1", 100.0 + second) == 0.0
    lockout.failed("10.0.0.1", 104.0)
    assert lockout.locked_for("10.0.0.1", 104.0) == 300.0
    assert lockout.locked_for("10.0.0.1", 354.0) == 50.0
    assert lockout.locked_for("10.0.0.2", 104.0) == 0.0  # another address is served


def test_the_lock_expires_and_counting_starts_again() -> None:
    lockout = Lockout(max_failures=2, window_s=600.0, lock_s=60.0)
    lockout.failed("a", 0.0)
    lockout.failed("a", 1.0)
    assert lockout.locked_for("a", 60.9) == pytest.approx(0.1)
    assert lockout.locked_for("a", 61.0) == 0.0
    lockout.failed("a", 62.0)
    assert lockout.locked_for("a", 62.0) == 0.0  # one failure since the lock
    lockout.failed("a", 63.0)
    assert lockout.locked_for("a", 63.0) == 60.0


def test_failures_while_locked_do_not_extend_the_lock() -> None:
    lockout = Lockout(max_failures=1, window_s=10.0, lock_s=10.0)
    lockout.failed("a", 0.0)
    lockout.failed("a", 5.0)
    assert lockout.locked_for("a", 5.0) == 5.0


def test_failures_older_than_the_window_do_not_count() -> None:
    lockout = Lockout(max_failures=3, window_s=10.0, lock_s=60.0)
    lockout.failed("a", 0.0)
    lockout.failed("a", 5.0)
    lockout.failed("a", 10.5)  # the first has left the window
    assert lockout.locked_for("a", 10.5) == 0.0
    lockout.failed("a", 14.0)  # 5.0, 10.5, 14.0 are within 10 s
    assert lockout.locked_for("a", 14.0) == 60.0


def test_success_clears_the_failures() -> None:
    lockout = Lockout(max_failures=2)
    lockout.failed("a", 0.0)
    lockout.succeeded("a")
    lockout.failed("a", 1.0)
    assert lockout.locked_for("a", 1.0) == 0.0
    assert len(lockout) == 1
    lockout.succeeded("a")
    lockout.succeeded("never seen")
    assert len(lockout) == 0


def test_memory_is_bounded_by_dropping_the_oldest_addresses() -> None:
    lockout = Lockout(max_failures=1, lock_s=60.0, max_addresses=3)
    for index, address in enumerate(["a", "b", "c"]):
        lockout.failed(address, float(index))
    lockout.failed("a", 3.0)  # already locked, but now the most recent
    lockout.failed("d", 4.0)
    assert len(lockout) == 3
    assert lockout.locked_for("b", 4.0) == 0.0  # the oldest, dropped
    assert lockout.locked_for("a", 4.0) > 0.0
    assert lockout.locked_for("c", 4.0) > 0.0
    assert lockout.locked_for("d", 4.0) > 0.0
    for index in range(1000):
        lockout.failed(f"10.0.{index // 256}.{index % 256}", 5.0)
    assert len(lockout) == 3


def test_lockout_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        Lockout(max_failures=0)
    with pytest.raises(ValueError):
        Lockout(max_addresses=0)


# -- logging in --------------------------------------------------------------------


class CountingVerify:
    """An injected verify that counts its calls and what they checked against."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, password: str, encoded: str) -> bool:
        self.calls.append(encoded)
        return verify_password(password, encoded)


USERS = {"alice": user("alice", "home/alice", "rw")}


def test_success_is_answered_at_once_and_clears_the_lockout() -> None:
    lockout = Lockout(max_failures=2)
    verify = CountingVerify()
    auth = Authenticator(USERS, lockout=lockout, verify=verify)
    lockout.failed("1.2.3.4", 0.0)
    verdict = auth.check("alice", "secret", "1.2.3.4", 10.0)
    assert verdict.ok and verdict.user == USERS["alice"]
    assert verdict.answer_at == 10.0
    assert verdict.locked_s == 0.0
    assert verify.calls == [HASH]
    assert len(lockout) == 0


def test_unknown_user_and_wrong_password_look_the_same() -> None:
    verify = CountingVerify()
    auth = Authenticator(USERS, lockout=Lockout(), verify=verify, failure_delay_s=1.5)
    unknown = auth.check("mallory", "secret", "1.2.3.4", 20.0)
    assert verify.calls == [dummy_hash()]  # the same work as a known user's
    wrong = auth.check("alice", "guess", "5.6.7.8", 20.0)
    assert verify.calls == [dummy_hash(), HASH]
    assert unknown.user is None and wrong.user is None
    assert unknown.answer_at == wrong.answer_at == 21.5
    assert (unknown.reason, wrong.reason) == ("unknown user", "wrong password")
    assert FAILED_MESSAGE == "authentication failed: wrong user name or password"


def test_a_locked_address_never_calls_verify() -> None:
    verify = CountingVerify()
    auth = Authenticator(USERS, lockout=Lockout(max_failures=3, lock_s=600.0), verify=verify)
    verdicts = [auth.check("alice", "guess", "1.2.3.4", float(t)) for t in range(3)]
    assert [v.locked_s for v in verdicts] == [0.0, 0.0, 600.0]  # the third one locks
    assert len(verify.calls) == 3
    locked = auth.check("alice", "secret", "1.2.3.4", 100.0)  # even the right password
    assert len(verify.calls) == 3
    assert locked.user is None
    assert locked.reason == "locked out"
    assert locked.locked_s == 502.0
    assert locked.answer_at == 101.0
    other = auth.check("alice", "secret", "5.6.7.8", 100.0)
    assert other.ok
    after = auth.check("alice", "secret", "1.2.3.4", 602.0)
    assert after.ok


def test_without_a_lockout_failures_only_wait() -> None:
    auth = Authenticator(USERS, failure_delay_s=2.0)
    for t in range(10):
        verdict = auth.check("alice", "guess", "1.2.3.4", float(t))
        assert verdict.reason == "wrong password"
        assert verdict.answer_at == t + 2.0
    assert auth.check("alice", "secret", "1.2.3.4", 10.0).ok


def test_replace_users_swaps_the_table() -> None:
    auth = Authenticator(USERS)
    assert auth.check("alice", "secret", "a", 0.0).ok
    auth.replace_users({"bob": user("bob")})
    assert auth.check("alice", "secret", "a", 1.0).reason == "unknown user"
    assert auth.check("bob", "secret", "a", 2.0).ok
