"""Local emulators of remote platforms, for checking the real drivers' API calls here.

Each one binds to 127.0.0.1 only, runs as a child process (so its settings and state are its
own), and is a service (lab.services.base): leaving the ``with`` block stops it and leaves
nothing behind. ``AnnouncedServer`` is what they share: the child announces its URL with its
first line, within a budget, and its standard error is kept as its log.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import urllib.request
from abc import abstractmethod
from pathlib import Path
from typing import IO, ClassVar

from lab import proc
from lab.artifacts import ArtifactStore, file_digest
from lab.services.base import ChildServer, ServiceError


class AnnouncedServer(ChildServer):
    """A child process that serves on 127.0.0.1 and announces itself with its first line on
    standard output; its standard error (its log) is kept in a temporary file.

    ``start()`` starts it (``_spawn``), reads that line within ``START_BUDGET_S`` and turns it
    into ``url`` (``_url_from``); ``stop()`` stops it (lab.services.base.ChildServer).
    """

    START_BUDGET_S = 30

    def __init__(self) -> None:
        super().__init__()
        self._url = ""
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL the child announced ("" before it did); it stays known once stopped."""
        return self._url

    def _launch(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  # closed by _clean_up
        self._process = self._spawn(self._stderr)
        self._url = self._url_from_first_line()

    @abstractmethod
    def _spawn(self, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start the child, its standard output a pipe and its standard error ``stderr``."""

    @abstractmethod
    def _url_from(self, line: str) -> str | None:
        """The URL that the child's first line announces, or None if it announces none."""

    def _url_from_first_line(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        readable, _, _ = select.select([stdout], [], [], self.START_BUDGET_S)
        line = stdout.readline().decode("utf-8", "replace").strip() if readable else ""
        url = self._url_from(line)
        if url is None:
            problem = self.log()[-2000:] or line or "no output"
            raise ServiceError(f"{self.NAME} did not start: {problem}")
        return url

    def log(self) -> str:
        """Everything the child wrote on its standard error (its log) so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()

    def _clean_up(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


class MotoServer(AnnouncedServer):
    """moto's server (EC2, EBS direct APIs, ...) on 127.0.0.1, with request validation on.

    ``with MotoServer() as moto:`` serves at ``moto.url``, the ``endpoint_url`` for boto3.
    """

    NAME = "moto's server"
    # moto reads these once, when it is imported: one more reason to give it a process of its own.
    VALIDATION: ClassVar[dict[str, str]] = {
        "MOTO_ENABLE_AMI_VALIDATION": "1",
        "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "1",
        "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
    }
    # Prints its port, then serves until its stdin closes: when we stop it, or when we die.
    CHILD = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""

    def _spawn(self, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        # The emulator needs no credentials: it does not get the caller's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return subprocess.Popen(
            [sys.executable, "-c", self.CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env | self.VALIDATION,
        )

    def _url_from(self, line: str) -> str | None:
        return f"http://127.0.0.1:{line}" if line.isdigit() else None  # the line is its port

    def reset(self) -> None:
        """Forget every resource (moto's own reset API): each test starts from an empty account."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(request, timeout=10):
            pass

    def _ask_to_stop(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()  # type: ignore[union-attr]


class Vcsim(AnnouncedServer):
    """govmomi's vCenter simulator (lab/services/vcsim/main.go) on 127.0.0.1: the simulator
    package's vCenter model (datacenter DC0, a host, a cluster, datastore LocalDS_0, a few VMs).

    ``with Vcsim(user, password) as vcsim:`` serves the SDK at ``vcsim.url``
    (``https://127.0.0.1:PORT/sdk``), which accepts that login only. Its certificate is Go's
    self-signed test certificate. The program is built once with Debian's Go, offline, into
    the artifact store, keyed by main.go and the versions of the Go and govmomi packages. The
    model's datastore lives in a private temporary directory (``tmpdir``), removed when the
    simulator stops (on SIGTERM it closes its server and removes its datastore).
    """

    NAME = "the vCenter simulator"
    SOURCE = os.path.join(os.path.dirname(__file__), "vcsim", "main.go")
    GO_PACKAGES = ("golang-go", "golang-github-vmware-govmomi-dev", "golang-github-google-uuid-dev")

    def __init__(self, user: str, password: str, binary: str | None = None) -> None:
        super().__init__()
        self.user = user
        self._password = password
        self._binary = binary
        self.tmpdir = ""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __repr__(self) -> str:
        return f"Vcsim(url={self.url!r}, user={self.user!r})"

    @classmethod
    def build(cls, store_root: str | None = None) -> str:
        """The simulator's binary, built with Debian's Go unless this input was built before
        (in the artifact store at ``store_root``, default: the lab's)."""
        store = ArtifactStore(Path(store_root) if store_root else None)
        inputs = {"main_go": file_digest(Path(cls.SOURCE)), "packages": cls._package_versions()}
        built = store.get("vcsim", inputs, lambda out: cls._go_build(str(out / "vcsim")))
        return str(built / "vcsim")

    @classmethod
    def _package_versions(cls) -> str:
        try:
            query = proc.run(
                "dpkg-query", "-W", "-f", "${Package}=${Version}\n", *cls.GO_PACKAGES,
                error=ServiceError,
            )  # fmt: skip
        except ServiceError as error:
            raise ServiceError(
                f"the vCenter simulator needs Debian's {', '.join(cls.GO_PACKAGES)}: "
                f"{error} (scripts/setup.sh installs them)"
            ) from error
        return query.stdout.strip()

    @classmethod
    def _go_build(cls, output: str) -> None:
        with tempfile.TemporaryDirectory(prefix="ucvm-go-") as scratch:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": scratch,
                "GOCACHE": os.path.join(scratch, "cache"),
                "GOPATH": "/usr/share/gocode",  # Debian's Go library packages live here
                "GO111MODULE": "off",  # offline: no module proxy, only the packages above
                "CGO_ENABLED": "0",
            }
            proc.run(
                "go", "build", "-trimpath", "-o", output, cls.SOURCE, env=env, error=ServiceError
            )

    def _launch(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="ucvm-vcsim-")
        self.tmpdir = self._tmp.name
        super()._launch()

    def _spawn(self, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [self._binary or self.build()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={  # not the caller's environment: no credentials of real platforms in it
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "TMPDIR": self.tmpdir,  # where the model puts its datastore
                "UCVM_VCSIM_USER": self.user,
                "UCVM_VCSIM_PASSWORD": self._password,
            },
        )

    def _url_from(self, line: str) -> str | None:
        return line if line.startswith("https://") else None

    def _clean_up(self) -> None:
        super()._clean_up()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
