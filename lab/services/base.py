"""The one life cycle of every service: start, stop, a context manager, and a sweep.

``Service`` is what every service of lab.services is: ``start()`` returns the service once it
answers (so ``service = Thing(...).start()`` is one step), ``stop()`` is idempotent and leaves
nothing behind, ``with Thing(...) as thing:`` starts it and stops it on leaving (also when
starting fails half-way), and ``Thing.sweep(run_root)`` removes what the services of runs that
died before their ``stop()`` left running.

``ChildServer`` is a service that is a child process of the lab: it holds the process, says
whether it runs, waits for it, and stops it (``_ask_to_stop``, by default SIGTERM, then a kill
after ``STOP_BUDGET_S``, then ``_clean_up``). A subclass writes only ``_launch``: start the
child, set ``_process`` as soon as it exists, and return once it serves.
"""

from __future__ import annotations

import socket
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self


class ServiceError(RuntimeError):
    """A service did not start (or cannot be made), with what it said about why."""


class Service(ABC):
    """Something the guest talks to at run time, on the host."""

    NAME: ClassVar[str] = "the service"  # for messages: "<NAME> did not start: ..."

    @property
    @abstractmethod
    def url(self) -> str:
        """Where it answers (the service refuses to say before it has started)."""

    @abstractmethod
    def start(self) -> Self:
        """Start it (a no-op if it runs) and return it once it answers."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it and remove what it made; a no-op when it is not running."""

    @abstractmethod
    def running(self) -> bool: ...

    @classmethod
    def sweep(cls, run_root: Path, only: str | None = None) -> list[str]:
        """Remove what services of this kind that dead runs under ``run_root`` started are
        still running (``only``: that run's); one line per thing removed. By default nothing:
        a service that lives in the lab's process, or a child that dies with it, leaves
        nothing to sweep."""
        return []

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def end_process(
    process: subprocess.Popen[bytes],
    timeout: float,
    ask: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> None:
    """Ask a running child to stop (``ask``, by default SIGTERM), kill it if it has not exited
    within ``timeout`` seconds, reap it, and close our ends of its pipes."""
    if process.poll() is None:
        (ask or subprocess.Popen.terminate)(process)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


class ChildServer(Service):
    """A service that runs as a child process of the lab."""

    STOP_BUDGET_S: ClassVar[float] = 10

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        if not self.running():
            try:
                self._launch()
            except BaseException:
                self.stop()  # a child that started but never served goes again
                raise
        return self

    @abstractmethod
    def _launch(self) -> None:
        """Start the child and return once it serves. Set ``_process`` as soon as the child
        exists, so that a failure after that stops it; raise when it does not serve."""

    def wait(self) -> int:
        """Block until the child exits; its exit status (0 when none runs)."""
        if self._process is None:
            return 0
        return self._process.wait()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            end_process(process, self.STOP_BUDGET_S, self._ask_to_stop)
        self._clean_up()

    def _ask_to_stop(self, process: subprocess.Popen[bytes]) -> None:
        process.terminate()  # SIGTERM

    def _clean_up(self) -> None:  # a hook: most children leave nothing else
        """What else to remove once the child has stopped (or failed to start)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at ``host`` now (a service binds it next; one that loses
    the race retries, as RepoServer does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
