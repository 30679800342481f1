"""``ftransfer serve``: the options into a ServerConfig, a Server, until a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from ..config import ServerConfig
from ..errors import UsageError
from ..server import Server


def config(args: argparse.Namespace) -> ServerConfig:
    if not os.path.isdir(args.root):
        raise UsageError(f"--root {args.root}: not a directory")
    return ServerConfig(
        root=args.root,
        host=args.host,
        port=args.port,
        read_only=args.read_only,
        max_connections=args.max_connections,
        max_connections_per_address=args.max_per_address,
        idle_timeout_s=args.idle_timeout,
        hello_timeout_s=args.hello_timeout,
        max_file_bytes=args.max_file_size,
        fsync=not args.no_fsync,
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
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = config(args)
    asyncio.run(_serve(settings))
    return 0


async def _serve(settings: ServerConfig) -> None:
    server = Server(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    mode = " (read-only)" if settings.read_only else ""
    root = getattr(server.store, "root", settings.root)
    print(f"ftransfer: serving {root}{mode} on {' '.join(server.urls)}", flush=True)
    await stop.wait()
    await server.close()
    logging.getLogger("ftransfer.server").info("stopped")
