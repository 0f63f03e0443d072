"""One table of user-data cases, run against both readers of docs/user-data.md: the lab's
parser (lab.build.userdata) and the boot loader's own scripts under busybox on the host
(decompress_user_data, then apply_ucernvm; apply_hostname). Each case states what is applied
and what is rejected, and both must say exactly that."""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_loader_context import guest_bin, run_loader  # noqa: F401  (guest_bin: a fixture)

from lab.build import userdata
from lab.observe import parse_context_steps

Applied = tuple[tuple[int, str, str], ...]  # (line, key, value), in order
Rejected = tuple[tuple[str, int, str], ...]  # (step, line or 0, key or "")


@dataclass(frozen=True)
class Case:
    name: str
    user_data: bytes
    applied: Applied = ()
    rejected: Rejected = ()


def block(*lines: str, eol: str = "\n") -> bytes:
    return "".join(f"{line}{eol}" for line in ("[ucernvm-begin]", *lines, "[ucernvm-end]")).encode()


def mime(*parts: tuple[str, bytes], boundary: str = "b", header: str = "") -> bytes:
    """A multipart/mixed message of (part headers, body) parts."""
    head = header or f"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary={boundary}\n"
    body = b"".join(
        f"--{boundary}\n{headers}\n\n".encode() + content + b"\n" for headers, content in parts
    )
    return head.encode() + b"\npreamble\n" + body + f"--{boundary}--\n".encode()


UCERNVM = "Content-Type: text/ucernvm"
SCRIPT = "Content-Type: text/x-shellscript"
HEREDOC = b"#!/bin/sh\ncat <<EOF >/etc/motd\n" + block("cvmfs_tag=6.6") + b"EOF\n"
B64_BLOCK = base64.encodebytes(block("cvmfs_branch=devel", "resize_rootfs=off"))
SERVER = "http://169.254.169.101:8080/os/x.y"


def nested(depth: int) -> bytes:
    """A text/ucernvm part ``depth`` multiparts down."""
    message = UCERNVM.encode() + b"\n\n" + block("cvmfs_tag=9.9")
    for level in range(depth):
        boundary = f"n{level}"
        message = (
            f"Content-Type: multipart/mixed; boundary={boundary}\n\n--{boundary}\n".encode()
            + message
            + f"\n--{boundary}--\n".encode()
        )
    return b"MIME-Version: 1.0\n" + message


CASES = [
    Case(
        "plain text, comments and blank lines",
        b"#!/bin/sh\necho hi\n" + block("cvmfs_tag=1.2", "# a comment", "", "resize_rootfs=on"),
        applied=((4, "cvmfs_tag", "1.2"), (7, "resize_rootfs", "on")),
    ),
    Case(
        "a heredoc block in a shell-script part before the text/ucernvm part",
        mime((SCRIPT, HEREDOC), (UCERNVM, block("cvmfs_tag=1.1"))),
        applied=((2, "cvmfs_tag", "1.1"),),
    ),
    Case(
        "MIME without a text/ucernvm part: a block elsewhere is ignored, and said so",
        mime((SCRIPT, HEREDOC)),
        rejected=(("ucernvm", 10, ""),),
    ),
    Case(
        "$( ) in the server's path",
        block("cvmfs_server=http://10.0.2.2/$(reboot)", "cvmfs_server=http://10.0.2.2/`id`"),
        rejected=(("ucernvm", 2, "cvmfs_server"), ("ucernvm", 3, "cvmfs_server")),
    ),
    Case(
        "a blank in the server's path",
        block("cvmfs_server=http://10.0.2.2/a b"),
        rejected=(("ucernvm", 2, "cvmfs_server"),),
    ),
    Case(
        "servers: a URL, host:port, an octet over 255, a path without http://",
        block(
            f"cvmfs_server={SERVER}",
            "cvmfs_server=10.0.2.2:80",
            "cvmfs_server=10.0.2.256",
            "cvmfs_server=10.0.2.2/os",
            "cvmfs_server=https://10.0.2.2/",
        ),
        applied=((2, "cvmfs_server", SERVER), (3, "cvmfs_server", "10.0.2.2:80")),
        rejected=(
            ("ucernvm", 4, "cvmfs_server"),
            ("ucernvm", 5, "cvmfs_server"),
            ("ucernvm", 6, "cvmfs_server"),
        ),
    ),
    Case(
        "a key with a blank in it is not two keys",
        block("cvmfs_tag cvmfs_branch=1.0"),
        rejected=(("ucernvm", 2, "cvmfs_tag cvmfs_branch"),),
    ),
    Case(
        "blanks: around the line trimmed, around = not",
        block("  cvmfs_tag=1.2\t ", "cvmfs_tag = 1.3", "Cvmfs_tag=1.4", "just words"),
        applied=((2, "cvmfs_tag", "1.2"),),
        rejected=(("ucernvm", 3, "cvmfs_tag "), ("ucernvm", 4, "Cvmfs_tag"), ("ucernvm", 5, "")),
    ),
    Case(
        "values per key",
        block(
            "cvmfs_tag=-n",
            "cvmfs_tag=a/b",
            "cvmfs_branch=team/x",
            "cvmfs_branch=a:b",
            "resize_rootfs=maybe",
            "cvmfs_tag=",
            "cvmfs_tag=1.1\xe9",
            "cvmfs_tag=" + "7" * 256,
            "cvmfs_tag=" + "7" * 255,
            "update_policy=never",
            "update_policy=diverge",
        ),
        applied=(
            (4, "cvmfs_branch", "team/x"),
            (10, "cvmfs_tag", "7" * 255),
            (12, "update_policy", "diverge"),
        ),
        rejected=tuple(
            ("ucernvm", line, key)
            for line, key in (
                (2, "cvmfs_tag"),
                (3, "cvmfs_tag"),
                (5, "cvmfs_branch"),
                (6, "resize_rootfs"),
                (7, "cvmfs_tag"),
                (8, "cvmfs_tag"),
                (9, "cvmfs_tag"),
                (11, "update_policy"),
            )
        ),
    ),
    Case(
        "a key given twice: each valid line applies in order, so the last wins",
        block("cvmfs_tag=1.1", "cvmfs_tag=1.2", "cvmfs_tag=bad;"),
        applied=((2, "cvmfs_tag", "1.1"), (3, "cvmfs_tag", "1.2")),
        rejected=(("ucernvm", 4, "cvmfs_tag"),),
    ),
    Case(
        "a base64 text/ucernvm part",
        mime((SCRIPT, HEREDOC), (f"{UCERNVM}\nContent-Transfer-Encoding: base64", B64_BLOCK)),
        applied=((2, "cvmfs_branch", "devel"), (3, "resize_rootfs", "off")),
    ),
    Case(
        "a base64 part that is not base64",
        mime((f"{UCERNVM}\nContent-Transfer-Encoding: BASE64", b"W3VjZXJudm0t!!*\n")),
        rejected=(("ucernvm", 0, ""),),
    ),
    Case(
        "base64 with = before the end",
        mime((f"{UCERNVM}\nContent-Transfer-Encoding: base64", b"QQ==QQ==\n")),
        rejected=(("ucernvm", 0, ""),),
    ),
    Case(
        "a quoted-printable part is not read",
        mime((f"{UCERNVM}\nContent-Transfer-Encoding: quoted-printable", block("cvmfs_tag=1.1"))),
        rejected=(("ucernvm", 0, ""),),
    ),
    Case(
        "only the first text/ucernvm part counts",
        mime((UCERNVM, block("cvmfs_tag=1.1")), (UCERNVM, block("cvmfs_tag=2.2"))),
        applied=((2, "cvmfs_tag", "1.1"),),
    ),
    Case(
        "a single-part text/ucernvm message",
        b"MIME-Version: 1.0\nContent-Type: Text/UCernVM; charset=us-ascii\n\n"
        + block("cvmfs_tag=1.1"),
        applied=((2, "cvmfs_tag", "1.1"),),
    ),
    Case(
        "a quoted boundary on a folded Content-Type line",
        mime(
            (UCERNVM, block("cvmfs_tag=1.1")),
            boundary="==x y==",
            header='Mime-Version: 1.0\nContent-Type: multipart/mixed;\n\tBoundary="==x y=="\n',
        ),
        applied=((2, "cvmfs_tag", "1.1"),),
    ),
    Case(
        "CRLF line ends, in a MIME message and in the block",
        mime((UCERNVM, block("cvmfs_tag=1.1", "resize_rootfs=on", eol="\r\n"))).replace(
            b"\n", b"\r\n"
        ),
        applied=((2, "cvmfs_tag", "1.1"), (3, "resize_rootfs", "on")),
    ),
    Case(
        "no end marker: the block is ignored",
        b"#!/bin/sh\n[ucernvm-begin]\ncvmfs_tag=1.1\nresize_rootfs=off\n",
        rejected=(("ucernvm", 2, ""),),
    ),
    Case(
        "two blocks: only the first counts",
        block("cvmfs_tag=1.1") + block("cvmfs_tag=2.0"),
        applied=((2, "cvmfs_tag", "1.1"),),
    ),
    Case(
        "markers: trailing blanks allowed, anything else after them is not a marker",
        b"[ucernvm-begin] here\ncvmfs_tag=0.1\n[ucernvm-begin]  \r\ncvmfs_tag=1.1\n"
        b"[ucernvm-end]x\n[ucernvm-end]\t\n",
        applied=((4, "cvmfs_tag", "1.1"),),
        rejected=(("ucernvm", 5, ""),),
    ),
    Case(
        "gzip",
        gzip.compress(mime((UCERNVM, block("cvmfs_tag=1.1")))),
        applied=((2, "cvmfs_tag", "1.1"),),
    ),
    Case(
        "gzip that does not decompress",
        gzip.compress(block("cvmfs_tag=1.1"))[:20],
        rejected=(("user-data", 0, ""),),
    ),
    Case(
        "gzip of more than 1 MiB",
        gzip.compress(block("cvmfs_tag=1.1") + b"#" * userdata.USER_DATA_MAX_BYTES),
        rejected=(("user-data", 0, ""),),
    ),
    Case(
        "plain user-data of more than 1 MiB",
        block("cvmfs_tag=1.1") + b"#" * userdata.USER_DATA_MAX_BYTES,
        rejected=(("user-data", 0, ""),),
    ),
    Case(
        "exactly 1 MiB",
        block("cvmfs_tag=1.1").ljust(userdata.USER_DATA_MAX_BYTES, b"#"),
        applied=((2, "cvmfs_tag", "1.1"),),
    ),
    Case(
        "nested multiparts are not searched, however deep",
        nested(3000),
        rejected=(("ucernvm", 9004, ""),),
    ),
    Case(
        "mime-version: in the first 4 KiB makes it MIME, as for cloud-init",
        b"#!/bin/sh\n# MIME-Version: 1.0\n" + block("cvmfs_tag=1.1"),
        rejected=(("ucernvm", 3, ""),),
    ),
    Case(
        "mime-version: after the first 4 KiB does not",
        b"#" * 4096 + b"\n# MIME-Version: 1.0\n" + block("cvmfs_tag=1.1"),
        applied=((4, "cvmfs_tag", "1.1"),),
    ),
]


def python_reads(user_data: bytes) -> tuple[Applied, Rejected]:
    parsed = userdata.parse_ucernvm_block(user_data, "user-data")
    return parsed.applied, tuple((p.step, p.line, p.key) for p in parsed.problems)


def loader_reads(guest_bin: Path, work: Path, user_data: bytes) -> tuple[Applied, Rejected]:  # noqa: F811
    (work / "case").write_bytes(user_data)
    console, _ = run_loader(
        guest_bin, work, f'cp "{work / "case"}" "$CONTEXT/user-data"\n'
        "decompress_user_data\napply_ucernvm",
    )  # fmt: skip
    steps = parse_context_steps([(None, line) for line in console.splitlines()])
    applied = tuple(
        (int(s.fields["line"]), s.step, s.fields["value"]) for s in steps if s.status == "applied"
    )
    rejected = tuple(
        (s.step, int(s.fields.get("line", 0)), s.fields.get("key", ""))
        for s in steps
        if s.status == "rejected"
    )
    return applied, rejected


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_both_readers_apply_and_reject_the_same(
    case: Case,
    guest_bin: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    expected = (case.applied, case.rejected)
    assert python_reads(case.user_data) == expected
    assert loader_reads(guest_bin, tmp_path, case.user_data) == expected


def test_the_last_valid_line_of_a_key_is_its_value() -> None:
    parsed = userdata.parse_ucernvm_block(block("cvmfs_tag=1.1", "cvmfs_tag=1.2"), "u")
    assert parsed.values == {"cvmfs_tag": "1.2"}


LABEL = "a" * 63
HOSTNAMES = [  # (name, what the kernel is given, or None: rejected)
    ("ucvm-host", "ucvm-host"),
    ("h", "h"),
    ("node-1.example.org", "node-1.example.org"),
    (LABEL, LABEL),
    ("a" * 64, None),
    ("b" * 31 + "." + "c" * 32, "b" * 31 + "." + "c" * 32),  # 64 characters: set whole
    ("b" * 32 + "." + "c" * 32, "b" * 32),  # 65: the kernel keeps 64, so the first label
    (".".join([LABEL] * 3 + ["d" * 61]), LABEL),  # 253
    (".".join([LABEL] * 3 + ["d" * 62]), None),  # 254
    ("-lead", None),
    ("trail-", None),
    ("a.-b", None),
    ("a-.b", None),
    ("a..b", None),
    ("a.", None),
    (".a", None),
    ("under_score", None),
    ("bad;name", None),
    ("$(reboot)", None),
]


@pytest.mark.parametrize(("name", "kernel"), HOSTNAMES, ids=[n[:20] for n, _ in HOSTNAMES])
def test_both_readers_take_the_same_host_names(
    name: str,
    kernel: str | None,
    guest_bin: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert userdata.valid_hostname(name) == (kernel is not None)
    if kernel is not None:
        assert userdata.kernel_hostname(name) == kernel
    (tmp_path / "name").write_text(name + "\n")
    console, context_dir = run_loader(
        guest_bin, tmp_path,
        f'cp "{tmp_path / "name"}" "$CONTEXT/hostname"\napply_hostname\n'
        'hostname >"$CONTEXT/set"',
    )  # fmt: skip
    [step] = parse_context_steps([(None, line) for line in console.splitlines()])
    assert (step.step, step.status) == ("hostname", "applied" if kernel else "rejected")
    if kernel is not None:
        assert step.fields["value"] == name and step.fields["set"] == kernel
        assert (context_dir / "set").read_text().strip() == kernel
