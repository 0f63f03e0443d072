"""LibvirtInstance.run reads a command's exit status off the console channel: the status line
may arrive split over reads, and only a whole line counts."""

from __future__ import annotations

import re
import socket
import threading
import time

from lab.targets.libvirt.instance import LibvirtInstance


def split_reply(pieces: list[str]) -> LibvirtInstance:
    """An instance whose channel answers the command it is sent with ``pieces``, one write
    each, a pause between them; ``{rc}`` in a piece becomes the status marker's name."""
    instance = object.__new__(LibvirtInstance)
    instance.name = "ucvm-test-channel"
    mine, theirs = socket.socketpair()

    def send(line: str) -> socket.socket:
        nonce = re.search(r"__UCVM_RC_([0-9a-f]+)=", line)
        assert nonce, line

        def answer() -> None:
            for piece in pieces:
                theirs.sendall(piece.format(rc=f"__UCVM_RC_{nonce[1]}").encode())
                time.sleep(0.2)

        threading.Thread(target=answer, daemon=True).start()
        return mine

    instance._send = send  # type: ignore[method-assign]
    return instance


def test_a_status_split_over_reads_is_read_whole() -> None:
    instance = split_reply(["an update is available\n{rc}=1", "00\n"])
    result = instance.run("ucvm-update --check", timeout=10)
    assert (result.exit_code, result.output) == (100, "an update is available\n")


def test_a_status_line_ending_in_cr_lf_counts() -> None:
    instance = split_reply(["done\r\n{rc}=0\r\n"])
    assert instance.run("true", timeout=10).exit_code == 0
