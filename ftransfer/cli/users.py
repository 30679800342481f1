"""``ftransfer user add|remove|list``: edit a users file (server/users.py owns it).

A password comes from standard input (``--password-stdin``, one line) or a prompt
on the terminal, asked twice; never from the command line, where any user of the
machine could read it in the process list.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ..server.users import (
    Permissions,
    User,
    check_root,
    check_user_name,
    hash_password,
    load_users,
    save_users,
)

MIN_PASSWORD_CHARS = 8
"""Shorter passwords are refused: scrypt slows a guesser, it cannot save a short one."""


def user(args: argparse.Namespace) -> int:
    action = {"add": _add, "remove": _remove, "list": _list}[args.action]
    return action(args)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for the password: use --password-stdin")
        import getpass

        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the passwords do not match")
    if len(password) < MIN_PASSWORD_CHARS:
        raise UsageError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    return password


def _root(args: argparse.Namespace) -> str:
    root = args.name if args.root is None else args.root.strip("/")
    try:
        return check_root(root)
    except ValueError as exc:
        raise UsageError(f"--root {args.root}: {exc}") from None


def _permissions(args: argparse.Namespace) -> Permissions:
    if args.read_only and args.permissions is not None:
        raise UsageError("--read-only and --permissions: choose one")
    text = "r" if args.read_only else (args.permissions or "rwd")
    try:
        return Permissions.parse(text)
    except ValueError as exc:
        raise UsageError(f"--permissions {text}: {exc}") from None


def _add(args: argparse.Namespace) -> int:
    check_user_name(args.name)
    users = load_users(args.users, missing_ok=True)
    root, permissions = _root(args), _permissions(args)
    users[args.name] = User(
        name=args.name,
        password_hash=hash_password(_password(args.password_stdin)),
        root=root,
        permissions=permissions,
    )
    save_users(args.users, users)
    where = root or "the whole served root"
    print(
        f"ftransfer: user {args.name} ({permissions.text or 'no access'}, root {where}) "
        f"saved in {args.users}; a running server reads it on SIGHUP"
    )
    return 0


def _remove(args: argparse.Namespace) -> int:
    users = load_users(args.users)
    if users.pop(args.name, None) is None:
        raise UsageError(f"{args.users}: no user {args.name}")
    save_users(args.users, users)
    print(f"ftransfer: user {args.name} removed from {args.users}")
    return 0


def _list(args: argparse.Namespace) -> int:
    users = load_users(args.users, missing_ok=True)
    for name in sorted(users):
        entry = users[name]
        print(f"{name}\t{entry.permissions.text or '-'}\t{entry.root or '/'}")
    return 0
