"""lab.proc.run: every subprocess's failure says which command, its exit code and what it said."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lab import proc


class BuildProblem(RuntimeError):
    pass


def test_a_command_that_succeeds_returns_its_output() -> None:
    done = proc.run("sh", "-c", "echo out; echo err >&2")
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")


def test_a_failure_names_the_command_its_exit_code_and_the_end_of_stderr() -> None:
    script = "for i in $(seq 1 3000); do echo line $i >&2; done; exit 7"
    with pytest.raises(BuildProblem) as raised:
        proc.run("sh", "-c", script, error=BuildProblem)
    message = str(raised.value)
    assert message.startswith(f"sh -c '{script}' failed (exit 7): …")
    assert message.endswith("line 3000")  # the end of stderr: what went wrong last
    assert "line 1\n" not in message and len(message) < proc.TAIL_CHARS + 200


def test_a_failure_without_stderr_shows_stdout() -> None:
    with pytest.raises(proc.CommandError, match=r"failed \(exit 1\): said on stdout$"):
        proc.run("sh", "-c", "echo said on stdout; exit 1")


def test_what_replaces_the_command_line_in_the_message() -> None:
    with pytest.raises(proc.CommandError, match=r"^packing the initramfs failed \(exit 2\)"):
        proc.run("sh", "-c", "exit 2", what="packing the initramfs")


def test_a_missing_program_and_a_timeout_raise_the_callers_error() -> None:
    with pytest.raises(BuildProblem, match=r"cannot run no-such-tool-here \(No such file"):
        proc.run("no-such-tool-here", error=BuildProblem)
    with pytest.raises(BuildProblem, match=r"sleep 5: did not finish within 0.2 s"):
        proc.run("sleep", "5", timeout=0.2, error=BuildProblem)


def test_unchecked_returns_the_failed_command_for_the_caller_to_read() -> None:
    done = proc.run("sh", "-c", "echo partial; exit 3", check=False)
    assert (done.returncode, done.stdout) == (3, "partial\n")


def test_bytes_input_and_output(tmp_path: Path) -> None:
    done = proc.run("cat", input=b"\x00\xff", text=False)
    assert done.stdout == b"\x00\xff"
    log = tmp_path / "build.log"
    with log.open("w") as out:
        proc.run("sh", "-c", "echo to-log; echo also >&2", stdout=out, merge_stderr=True)
    assert log.read_text() == "to-log\nalso\n"


def test_the_command_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="lab.proc"):
        proc.run("echo", "a b")
    assert "run: echo 'a b'" in caplog.text
