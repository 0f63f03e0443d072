"""Local emulators of remote platforms, for checking the real drivers' API calls here.

Each one binds to 127.0.0.1 only, runs as a child process (so its settings and state are its
own), and is a context manager: leaving the ``with`` block stops it and leaves nothing behind.
``ChildServer`` holds that shared life cycle: start, first line within a budget, log, stop.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import urllib.request
from abc import ABC, abstractmethod
from types import TracebackType
from typing import IO, ClassVar


class ChildServer(ABC):
    """A child process that serves on 127.0.0.1 and announces itself with its first line on
    standard output; its standard error (its log) is kept in a temporary file.

    ``with server as url:`` starts it (``_spawn``), reads that line within ``START_BUDGET_S``
    and turns it into ``url`` (``_url_from``), and stops it on leaving: ``_ask_to_stop``
    (default: SIGTERM), then a kill after ``STOP_BUDGET_S``, then ``_clean_up``.
    """

    START_BUDGET_S = 30
    STOP_BUDGET_S = 10
    NAME = "the server"  # for the error "<NAME> did not start: ..."

    def __init__(self) -> None:
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> str:
        self._stderr = tempfile.TemporaryFile()
        try:
            self._process = self._spawn(self._stderr)
            self.url = self._url_from_first_line()
        except BaseException:
            self.stop()
            raise
        return self.url

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
            raise RuntimeError(f"{self.NAME} did not start: {problem}")
        return url

    def log(self) -> str:
        """Everything the child wrote on its standard error (its log) so far."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            self._ask_to_stop(process)
            try:
                process.wait(timeout=self.STOP_BUDGET_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()  # type: ignore[union-attr]
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._clean_up()

    def _ask_to_stop(self, process: subprocess.Popen[bytes]) -> None:
        process.terminate()  # SIGTERM

    def _clean_up(self) -> None:  # noqa: B027  # a hook: most children leave nothing else
        """What else to remove once the child has stopped (or failed to start)."""

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MotoServer(ChildServer):
    """moto's server (EC2, EBS direct APIs, ...) on 127.0.0.1, with request validation on.

    ``with MotoServer() as endpoint_url:`` gives the URL to hand boto3 as ``endpoint_url``.
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


class Vcsim(ChildServer):
    """govmomi's vCenter simulator (lab/targets/vcsim/main.go) on 127.0.0.1: the simulator
    package's vCenter model (datacenter DC0, a host, a cluster, datastore LocalDS_0, a few VMs).

    ``with Vcsim(user, password) as url:`` gives the SDK URL (``https://127.0.0.1:PORT/sdk``),
    which accepts that login only. Its certificate is Go's self-signed test certificate. The
    program is built once with Debian's Go, offline, into the artifact store, keyed by main.go
    and the versions of the Go and govmomi packages. The model's datastore lives in a private
    temporary directory (``tmpdir``), removed when the simulator stops (on SIGTERM it closes
    its server and removes its datastore).
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
        # Imported here so that this class stays self-contained within the module.
        from pathlib import Path

        from lab.artifacts import ArtifactStore, file_digest

        store = ArtifactStore(Path(store_root) if store_root else None)
        inputs = {"main_go": file_digest(Path(cls.SOURCE)), "packages": cls._package_versions()}
        built = store.get("vcsim", inputs, lambda out: cls._go_build(str(out / "vcsim")))
        return str(built / "vcsim")

    @classmethod
    def _package_versions(cls) -> str:
        query = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *cls.GO_PACKAGES],
            capture_output=True,
            text=True,
        )
        if query.returncode != 0:
            raise RuntimeError(
                f"the vCenter simulator needs Debian's {', '.join(cls.GO_PACKAGES)}: "
                f"{query.stderr.strip()} (scripts/setup.sh installs them)"
            )
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
            command = ["go", "build", "-trimpath", "-o", output, cls.SOURCE]
            result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")

    def __enter__(self) -> str:
        self._tmp = tempfile.TemporaryDirectory(prefix="ucvm-vcsim-")
        self.tmpdir = self._tmp.name
        return super().__enter__()

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
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
