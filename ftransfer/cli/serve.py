"""``ftransfer serve``: the options into a ServerConfig, a Server, until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from ..config import ServerConfig
from ..errors import FtransferError, UsageError
from ..server import Server, logs


def config(args: argparse.Namespace) -> ServerConfig:
    if args.store is None and not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: not a directory")
    if args.store is not None and args.root != ".":
        raise UsageError("--store serves an object store: leave out --root")
    if args.users and args.anonymous_write:
        raise UsageError("--anonymous-write is for a server without --users")
    return ServerConfig(
        root=args.root,
        store=args.store,
        s3_endpoint=args.s3_endpoint,
        s3_region=args.s3_region,
        host=args.host,
        port=args.port,
        read_only=args.read_only,
        tls=not args.insecure,
        state_dir=args.state_dir,
        cert_file=args.cert,
        key_file=args.key,
        users_file=args.users,
        anonymous_write=args.anonymous_write,
        tftp_writable=args.tftp_writable,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_per_address,
        idle_timeout_s=args.idle_timeout,
        hello_timeout_s=args.hello_timeout,
        max_file_bytes=args.max_file_size,
        max_rate=args.max_rate,
        max_total_rate=args.max_total_rate,
        fsync=not args.no_fsync or args.store is not None,  # (an object store: always)
        partial_ttl_s=args.partial_ttl,
        udp=not args.no_udp,
        udp_port=args.udp_port,
        udp_give_up_s=args.udp_give_up,
        tftp_port=args.tftp_port,
        tftp_max_blksize=args.tftp_max_blksize,
        tftp_max_window=args.tftp_max_window,
        tftp_max_sessions=args.tftp_max_sessions,
        tftp_give_up_s=args.tftp_give_up,
    )


def serve(args: argparse.Namespace) -> int:
    settings = config(args)
    logs.configure(
        level=args.log_level,
        log_format=args.log_format,
        syslog=args.syslog,
        facility=args.syslog_facility,
    )
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: ServerConfig) -> None:
    server = Server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, server)
    root = getattr(server.store, "root", settings.root)
    print(f"ftransfer: serving {root}{_mode(server)} on {' '.join(_urls(server))}", flush=True)
    if server.identity_created:
        log.info("created a key and a self-signed certificate, fingerprint %s", server.fingerprint)
    if not settings.tls:
        log.warning("--insecure: TCP is plaintext, unencrypted and unauthenticated")
    await stop.wait()
    await server.close()
    log.info("stopped")


log = logging.getLogger("ftransfer.server")


def _mode(server: Server) -> str:
    """What the ready line says of access: who may do what."""
    config = server.config
    if config.users_file:
        access = "users from " + config.users_file
    elif config.anonymous_write:
        access = "anonymous read-write"
    else:
        access = "anonymous read-only"
    read_only = ", read-only" if config.read_only else ""
    return f" ({access}{read_only})"


def _urls(server: Server) -> list[str]:
    """The URLs, the TCP one followed by its fingerprint (or "plaintext")."""
    urls = server.urls
    urls[0] += f" ({server.fingerprint})" if server.fingerprint else " (plaintext)"
    return urls


def _reload(server: Server) -> None:
    try:
        count = server.reload_users()
    except FtransferError as exc:
        log.error("SIGHUP: the users file did not load, keeping the old users: %s", exc)
        return
    log.info("SIGHUP: %d users loaded from %s", count, server.config.users_file)
