"""The nginx that serves an OS repository to guests, and what it sent to each of them.

``RepoServer`` runs Debian's nginx in the foreground as a child (a ChildServer of
lab.services.base), serving REPO (lab.build.osrepo.repository) read-only on 127.0.0.1 with
Range support. It counts the bytes it sent to each guest from its access log (the guest sends
``X-Ucvm-Instance``); a request to a sync marker first makes sure the log holds every answer
a client has received. A port another process took in the meantime is retried with another
(or, for a fixed port, again a moment later). ``sweep_servers`` kills the servers that dead
runs left running, found by their pid files in the run directories.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from lab.build.osrepo.keys import RepoError, default_key_path
from lab.build.osrepo.manifest import MANIFEST, SNAPSHOTS
from lab.run import dead_run_dirs
from lab.services.base import ChildServer, end_process, free_port

NGINX = "/usr/sbin/nginx"
PID_FILE = "nginx.pid"
CONF_FILE = "nginx.conf"
ACCESS_LOG = "access.log"
ERROR_LOG = "error.log"
SYNC_PREFIX = "/.ucvm-sync-"
START_ATTEMPTS = 5
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
LOG_FIELDS = (
    "$msec", "$http_x_ucvm_instance", "$status", "$body_bytes_sent", "$bytes_sent",
    "$request_method", "$uri", "$http_range",
)  # fmt: skip


@dataclass(frozen=True)
class AccessRecord:
    """One line of the server's access log ("" for a header the request did not send)."""

    msec: float
    instance: str
    status: int
    body_bytes: int
    total_bytes: int
    method: str
    uri: str
    range: str

    @property
    def kind(self) -> str:
        """manifest, blocks, image or other."""
        if self.uri == "/" + MANIFEST:
            return "manifest"
        if self.uri.startswith(f"/{SNAPSHOTS}/"):
            return {".blocks": "blocks", ".img": "image"}.get(Path(self.uri).suffix, "other")
        return "other"

    @classmethod
    def parse(cls, line: str) -> AccessRecord | None:
        fields = [("" if f == "-" else f) for f in line.rstrip("\n").split("\t")]
        if len(fields) != len(LOG_FIELDS):
            return None
        msec, instance, status, body, total, method, uri, byte_range = fields
        try:
            return cls(
                float(msec), instance, int(status), int(body), int(total), method, uri,
                byte_range,
            )  # fmt: skip
        except ValueError:
            return None


@dataclass(frozen=True)
class Transfer:
    requests: int = 0
    body_bytes: int = 0  # the bodies (file data) sent
    total_bytes: int = 0  # with the response headers

    def __add__(self, other: Transfer) -> Transfer:
        return Transfer(
            self.requests + other.requests,
            self.body_bytes + other.body_bytes,
            self.total_bytes + other.total_bytes,
        )


@dataclass(frozen=True)
class TransferTotals(Transfer):
    """What the server sent one instance, in all and by kind (manifest, blocks, image)."""

    by_kind: dict[str, Transfer] = field(default_factory=dict)

    def kind(self, name: str) -> Transfer:
        return self.by_kind.get(name, Transfer())

    @property
    def snapshots(self) -> Transfer:
        """The snapshot files (images and their block hashes), without the manifest."""
        return self.kind("image") + self.kind("blocks")

    @property
    def image_body_bytes(self) -> int:
        """The image data sent: what the guest's block client fetched."""
        return self.kind("image").body_bytes

    @classmethod
    def of(cls, records: list[AccessRecord]) -> TransferTotals:
        by_kind: dict[str, Transfer] = {}
        for record in records:
            one = Transfer(1, record.body_bytes, record.total_bytes)
            by_kind[record.kind] = by_kind.get(record.kind, Transfer()) + one
        total = sum(by_kind.values(), Transfer())
        return cls(total.requests, total.body_bytes, total.total_bytes, by_kind)


def conf_path_value(path: Path) -> str:
    """A path as an nginx config string; refuses what nginx would read as syntax."""
    text = str(path.resolve())
    if any(c in text for c in '"$\\;{}\n'):
        raise RepoError(f"{text}: nginx cannot take this path (quotes, $, braces or ;)")
    return f'"{text}"'


def nginx_conf(root: Path, run_dir: Path, host: str, port: int) -> str:
    """One nginx process (master_process off: nothing to orphan), serving ``root`` read-only."""
    run = run_dir.resolve()
    tmp = {name: conf_path_value(run / "tmp" / name) for name in
           ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}  # fmt: skip
    log_format = "\\t".join(LOG_FIELDS)
    lines = [
        "user root;" if os.geteuid() == 0 else "",
        "master_process off;",
        f"pid {conf_path_value(run / PID_FILE)};",
        f"error_log {conf_path_value(run / ERROR_LOG)} warn;",
        "events { worker_connections 1024; }",
        "http {",
        "    default_type application/octet-stream;",
        f"    log_format ucvm '{log_format}';",
        f"    access_log {conf_path_value(run / ACCESS_LOG)} ucvm;",
        *(f"    {name}_temp_path {value};" for name, value in tmp.items()),
        "    sendfile on;",
        "    server_tokens off;",
        "    server {",
        f"        listen {host}:{port};",
        f"        root {conf_path_value(root)};",
        "        autoindex off;",
        "        disable_symlinks on;",  # a link in the tree cannot point nginx elsewhere
        "        log_not_found off;",
        f"        location ^~ {SYNC_PREFIX} {{ return 204; }}",
        "        location ~ /\\. { deny all; }",
        "        location / { limit_except GET { deny all; } }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def nginx_command(run_dir: Path, outlive: bool = False) -> list[str]:
    """nginx in the foreground; ``setpriv --pdeathsig`` ends it if the lab dies (the signal
    comes when the *thread* that started it ends: start servers from the main thread), unless
    it is to ``outlive`` the lab (a kept instance's; the sweeper kills it by its pid file)."""
    command = [
        NGINX, "-p", f"{run_dir.resolve()}/", "-c", str(run_dir.resolve() / CONF_FILE),
        "-e", str(run_dir.resolve() / ERROR_LOG), "-g", "daemon off;",
    ]  # fmt: skip
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *command] if setpriv and not outlive else command


def read_pid(pid_file: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pid_file.read_text().strip())
    return None


def process_alive(pid: int) -> bool:
    """Running (not a zombie), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


class RepoServer(ChildServer):
    """nginx serving a repository on ``host`` (127.0.0.1): a service, restartable (stop(),
    then start() serves on the same port again). Its files live in ``run_dir``. With
    ``outlive``, it does not end with the lab's process (`--keep-failed`: a kept instance's
    server runs until `ucvm-lab down RUN` or `sweep`)."""

    NAME = "the repository server"
    STOP_BUDGET_S = STOP_TIMEOUT_S

    def __init__(
        self,
        root: Path,
        run_dir: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        outlive: bool = False,
    ) -> None:
        super().__init__()
        self.outlive = outlive
        self.root = Path(root)
        self.run_dir = Path(run_dir)
        self.host = host
        self._port = port
        self._fixed_port = port is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RepoError("the repository server has not started yet")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def access_log(self) -> Path:
        return self.run_dir / ACCESS_LOG

    @property
    def error_log(self) -> Path:
        return self.run_dir / ERROR_LOG

    @classmethod
    def sweep(cls, run_root: Path, only: str | None = None) -> list[str]:
        return sweep_servers(run_root, only)

    def _launch(self) -> None:
        """Start nginx, on the port it had before if it ran already (a guest keeps its URL)."""
        if not Path(NGINX).exists():
            raise RepoError(f"{NGINX} is missing: apt-get install nginx-light")
        if not (self.root / MANIFEST).is_file():
            raise RepoError(f"{self.root / MANIFEST}: missing: serve a repository")
        key = default_key_path().resolve()
        if key.is_relative_to(self.root.resolve()):
            raise RepoError(
                f"the signing key {key} is inside {self.root}, which would serve it: "
                "move it out (UCVM_REPO_KEY) before serving"
            )
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        problem = ""
        for _ in range(START_ATTEMPTS):
            port = self._port if self._port is not None else free_port(self.host)
            problem = self._launch_on(port)
            if not problem:
                self._port = port
                return
            if "in use" not in problem:
                break
            if self._fixed_port:
                time.sleep(0.5)
        raise RepoError(f"nginx did not start ({self.error_log}): {problem}")

    def _launch_on(self, port: int) -> str:
        """Start nginx on ``port``: "" once it listens, else what went wrong."""
        (self.run_dir / CONF_FILE).write_text(nginx_conf(self.root, self.run_dir, self.host, port))
        (self.run_dir / PID_FILE).unlink(missing_ok=True)
        offset = self.error_log.stat().st_size if self.error_log.exists() else 0
        with (self.run_dir / "nginx.out").open("ab") as output:
            process = subprocess.Popen(
                nginx_command(self.run_dir, self.outlive),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of `repo serve` is ours to handle
            )
        if self._wait_listening(process):
            self._process = process
            return ""
        end_process(process, self.STOP_BUDGET_S)
        return self._errors_since(offset) or f"nginx exited with status {process.returncode}"

    def _wait_listening(self, process: subprocess.Popen[bytes]) -> bool:
        """nginx writes its pid file once its socket listens; False if it exits first."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            if read_pid(self.run_dir / PID_FILE) == process.pid:
                return True
            time.sleep(0.02)
        return False

    def _errors_since(self, offset: int) -> str:
        try:
            with self.error_log.open("rb") as log:
                log.seek(offset)
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        errors = [line for line in text.splitlines() if "[emerg]" in line or "[alert]" in line]
        return errors[0] if errors else ""  # the cause; the last one is a summary

    # --- what was sent

    def records(self, sync: bool = True) -> list[AccessRecord]:
        """The access log's records. ``sync`` first makes sure every request whose response
        a client has received is logged (nginx logs after the response)."""
        if sync and self.running():
            self._sync()
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        parsed = (AccessRecord.parse(line) for line in lines)
        return [r for r in parsed if r and not r.uri.startswith(SYNC_PREFIX)]

    def bytes_sent(self, instance: str) -> TransferTotals:
        """What the server sent to requests with ``X-Ucvm-Instance: instance``."""
        return TransferTotals.of([r for r in self.records() if r.instance == instance])

    def _sync(self) -> None:
        """One process handles requests in order: once a marker request is logged, every
        response completed before it is logged too."""
        marker = SYNC_PREFIX + secrets.token_hex(8)
        request = urllib.request.Request(self.url.rstrip("/") + marker)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy
        with contextlib.suppress(urllib.error.URLError, OSError):
            direct.open(request, timeout=5).close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                if marker in self.access_log.read_text(errors="replace"):
                    return
            time.sleep(0.01)


def nginx_of(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is an nginx started with a config inside ``run_dir``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    inside = str(run_dir.resolve()).encode() + b"/"
    return any(a.endswith(b"nginx") for a in argv) and any(a.startswith(inside) for a in argv)


def sweep_servers(run_root: Path, only: str | None = None) -> list[str]:
    """Kill the repository servers that dead runs under ``run_root`` (``only``: that run)
    left running (call it before their files are swept: it finds them by their pid files)."""
    killed = []
    for run_dir in dead_run_dirs(run_root, only):
        for pid_file in run_dir.rglob(PID_FILE):
            pid = read_pid(pid_file)
            if pid and process_alive(pid) and nginx_of(pid, pid_file.parent):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(f"nginx {pid} ({pid_file.parent})")
    return killed
