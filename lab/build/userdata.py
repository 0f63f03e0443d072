"""μCernVM's ``[ucernvm-begin]`` block and the host name, read from user-data by the rule in
docs/user-data.md. The boot loader (lab/build/initramfs/context: ucernvm_source,
ucernvm_block, apply_ucernvm_line, is_hostname) follows the same rule line for line;
tests/test_user_data_cases.py runs both on one table of cases.

The text is handled as bytes (latin-1, one character a byte), lines split at LF only, as
busybox awk reads them."""

from __future__ import annotations

import base64
import binascii
import difflib
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

UCERNVM_BEGIN = "[ucernvm-begin]"
UCERNVM_END = "[ucernvm-end]"
UCERNVM_CONTENT_TYPE = "text/ucernvm"
USER_DATA_MAX_BYTES = 1024 * 1024  # plain or decompressed; the boot loader's limit too
MIME_SNIFF_BYTES = 4096  # cloud-init's rule: "mime-version:" in the first 4 KiB means MIME
VALUE_MAX_CHARS = 255
KERNEL_HOSTNAME_MAX = 64  # the kernel's nodename; a longer name is set as its first label

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_HOST_PORT = rf"{_OCTET}(\.{_OCTET}){{3}}(:[0-9]{{1,5}})?"
# The boot loader's HTTP client takes a numeric IPv4 address (the initramfs resolves no names)
_SERVER = re.compile(rf"{_HOST_PORT}|http://{_HOST_PORT}(/[A-Za-z0-9._:/-]*)?")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BOUNDARY = re.compile(r";[ \t]*boundary=", re.I)

# key -> (is the value valid, what a valid value looks like)
UCERNVM_KEYS: dict[str, tuple[Callable[[str], object], str]] = {
    "cvmfs_server": (
        _SERVER.fullmatch,
        "IPv4[:port] or an http://IPv4[:port]/path URL of the OS repository (the boot "
        "loader resolves no host names; the path of A-Za-z0-9._:/- only)",
    ),
    "cvmfs_tag": (_TAG.fullmatch, "an OS version: a tag (e.g. 1.2), newest or previous"),
    "cvmfs_branch": (_BRANCH.fullmatch, "a branch name of the OS repository (e.g. devel)"),
    "resize_rootfs": (lambda value: value in ("on", "off"), "on or off"),
    "update_policy": (
        lambda value: value in ("stay", "rebase", "diverge"),
        "stay (never leave the pinned version), rebase (follow the pinned branch when asked) "
        "or diverge (keep the local root, never rebase)",
    ),
}


def valid_hostname(name: str) -> bool:
    """RFC 1123: dot-separated labels of 1-63 letters, digits and -, no - at a label's ends,
    253 characters at most."""
    return len(name) <= 253 and _HOSTNAME.fullmatch(name) is not None


def kernel_hostname(name: str) -> str:
    """What the boot loader sets (and writes to /etc/hostname) for a valid name."""
    return name if len(name) <= KERNEL_HOSTNAME_MAX else name.split(".")[0]


@dataclass(frozen=True)
class BlockProblem:
    source: str  # the user-data's name, and the MIME part when the block is in one
    line: int  # 1-based, in the text the block is read from; 0: not one line's
    what: str
    fix: str
    step: str = "ucernvm"  # the boot loader's step: ucernvm (the block), user-data (all of it)
    key: str = ""  # the key of a key=value line, as the boot loader's step names it

    def __str__(self) -> str:
        where = f"{self.source}, line {self.line}" if self.line else self.source
        return f"{where}: {self.what}; {self.fix}"


@dataclass(frozen=True)
class UcernvmBlock:
    values: dict[str, str] = field(default_factory=dict)  # each key's last valid value
    problems: tuple[BlockProblem, ...] = ()
    found: bool = False  # a [ucernvm-begin] line was there
    applied: tuple[tuple[int, str, str], ...] = ()  # (line, key, value) in order


def parse_ucernvm_block(user_data: bytes, source: str) -> UcernvmBlock:
    """μCernVM's block from user-data as a user wrote it: plain text, gzip, or a MIME
    multi-part message (then only its first text/ucernvm part counts)."""
    data = _unpacked(user_data, source)
    if isinstance(data, BlockProblem):
        return UcernvmBlock(problems=(data,))
    text = data.decode("latin-1")
    if b"mime-version:" not in data[:MIME_SNIFF_BYTES].lower():
        return _parse_block(text, source)
    part = _mime_part(text.split("\n"))
    if part is None:
        first = _marker_lines(text, UCERNVM_BEGIN)
        if not first:
            return UcernvmBlock()
        what = "MIME user-data: the block is read from its first text/ucernvm part only"
        fix = f"put the block in a part of Content-Type: {UCERNVM_CONTENT_TYPE}"
        return UcernvmBlock(problems=(BlockProblem(source, first[0], what, fix),), found=True)
    number, encoding, body = part
    part_source = f"{source}, MIME part {number} ({UCERNVM_CONTENT_TYPE})"
    decoded = _decoded(body, encoding, part_source)
    if isinstance(decoded, BlockProblem):
        return UcernvmBlock(problems=(decoded,), found=True)
    return _parse_block(decoded, part_source)


def _unpacked(user_data: bytes, source: str) -> bytes | BlockProblem:
    if user_data[:2] != b"\x1f\x8b":  # gzip, which cloud-init and the boot loader accept
        if len(user_data) <= USER_DATA_MAX_BYTES:
            return user_data
        what = f"{len(user_data):,} bytes, more than {USER_DATA_MAX_BYTES:,}"
        return BlockProblem(source, 0, what, "shorten it, or gzip it", step="user-data")
    try:
        return gunzip_bounded(user_data, USER_DATA_MAX_BYTES)
    except zlib.error as error:
        what = f"gzip that does not decompress, or to more than {USER_DATA_MAX_BYTES:,} bytes"
        fix = "compress it again with gzip, or send it plain"
        return BlockProblem(source, 0, f"{what} ({error})", fix, step="user-data")


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """gzip's members, decompressed; zlib.error when damaged or over ``limit`` bytes. Never
    holds more than limit + 1 bytes of output (a gzip bomb stops there)."""
    out = bytearray()
    while data:
        stream = zlib.decompressobj(wbits=31)
        out += stream.decompress(data, limit + 1 - len(out))
        if len(out) > limit or stream.unconsumed_tail:
            raise zlib.error(f"more than {limit:,} bytes decompressed")
        if not stream.eof:
            raise zlib.error("the gzip stream is cut short")
        data = stream.unused_data
    return bytes(out)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip(" \t").lower()


def _boundary(content_type: str) -> str:
    match = _BOUNDARY.search(content_type)
    if not match:
        return ""
    rest = content_type[match.end() :]
    if rest.startswith('"'):
        return rest[1:].split('"', 1)[0]
    return re.split(r"[; \t]", rest, maxsplit=1)[0]


class _Headers:
    """A header section read line by line: folded lines join the one before, as the boot
    loader's awk joins them."""

    def __init__(self) -> None:
        self.content_type = ""
        self.encoding = "7bit"
        self._pending = ""

    def feed(self, line: str) -> bool:
        """Take one line; True when it ended the section (an empty line)."""
        if line[:1] in (" ", "\t") and self._pending:
            self._pending += line
            return False
        self._flush()
        self._pending = line
        return not line

    def _flush(self) -> None:
        lower = self._pending.lower()
        if lower.startswith("content-type:"):
            self.content_type = self._pending[13:]
        elif lower.startswith("content-transfer-encoding:"):
            self.encoding = lower[26:].strip(" \t")


def _mime_part(lines: list[str]) -> tuple[int, str, str] | None:
    """(number, transfer encoding, body) of the first text/ucernvm part at the message's top
    level (a single-part message of that type is part 1). Nested multiparts are not searched:
    no depth of nesting costs more than one pass."""
    headers, index = _read_headers(lines, 0)
    if headers is None:
        return None
    if _media_type(headers.content_type) == UCERNVM_CONTENT_TYPE:
        return 1, headers.encoding or "7bit", _body(lines, index, "")
    boundary = _boundary(headers.content_type)
    if not _media_type(headers.content_type).startswith("multipart/") or not boundary:
        return None
    delimiter, number = "--" + boundary, 0
    while (found := _next_delimiter(lines, index, delimiter)) is not None:
        number += 1
        headers, index = _read_headers(lines, found + 1, delimiter)
        if headers is None:
            return None
        if _media_type(headers.content_type) == UCERNVM_CONTENT_TYPE:
            return number, headers.encoding or "7bit", _body(lines, index, delimiter)
    return None


def _clean(line: str) -> str:
    return line.removesuffix("\r")


def _read_headers(lines: list[str], start: int, delimiter: str = "") -> tuple[_Headers | None, int]:
    """(headers, the body's first line) from lines[start]; None when the section does not
    end. A delimiter line inside a part's headers begins the next part."""
    headers = _Headers()
    for index in range(start, len(lines)):
        line = _clean(lines[index])
        if delimiter and line.rstrip(" \t") in (delimiter, delimiter + "--"):
            return _Headers(), index  # an empty part: read on from its delimiter
        if headers.feed(line):
            return headers, index + 1
    return None, len(lines)


def _next_delimiter(lines: list[str], start: int, delimiter: str) -> int | None:
    """The index of the next delimiter line; None at the close delimiter or the end."""
    for index in range(start, len(lines)):
        line = _clean(lines[index]).rstrip(" \t")
        if line == delimiter:
            return index
        if line == delimiter + "--":
            return None
    return None


def _body(lines: list[str], start: int, delimiter: str) -> str:
    body = []
    for line in lines[start:]:
        line = _clean(line)
        if delimiter and line.rstrip(" \t") in (delimiter, delimiter + "--"):
            break
        body.append(line)
    return "".join(f"{line}\n" for line in body)


def _decoded(body: str, encoding: str, source: str) -> str | BlockProblem:
    if encoding in ("7bit", "8bit", "binary"):
        return body
    if encoding != "base64":
        what = f"Content-Transfer-Encoding {encoding} is not read"
        return BlockProblem(source, 0, what, "use 7bit or base64")
    compact = body.replace("\r", "").replace("\n", "")
    try:
        if len(compact) % 4 or not _BASE64.fullmatch(compact):
            raise binascii.Error("characters outside the alphabet, or = before the end")
        return base64.b64decode(compact, validate=True).decode("latin-1")
    except (binascii.Error, ValueError) as error:
        return BlockProblem(
            source,
            0,
            f"Content-Transfer-Encoding base64, but not base64 ({error})",
            "encode the part again (base64 -w 76), or send it as 7bit text",
        )


def _marker_lines(text: str, marker: str) -> list[int]:
    """The 1-based numbers of the lines that are ``marker`` (a CR and blanks after it aside)."""
    return [
        number
        for number, line in enumerate(text.split("\n"), 1)
        if _clean(line).rstrip(" \t") == marker
    ]


def _parse_block(text: str, source: str) -> UcernvmBlock:
    lines = [_clean(line) for line in text.split("\n")]
    begin = next((i for i, line in enumerate(lines) if line.rstrip(" \t") == UCERNVM_BEGIN), None)
    if begin is None:
        return UcernvmBlock()
    end = next(
        (i for i in range(begin + 1, len(lines)) if lines[i].rstrip(" \t") == UCERNVM_END), None
    )
    if end is None:
        what = f"{UCERNVM_BEGIN} without {UCERNVM_END}; the block is ignored"
        fix = f"add a line {UCERNVM_END} after the block's last key=value line"
        return UcernvmBlock(problems=(BlockProblem(source, begin + 1, what, fix),), found=True)
    values: dict[str, str] = {}
    applied: list[tuple[int, str, str]] = []
    problems: list[BlockProblem] = []
    for number in range(begin + 1, end):
        entry = lines[number].strip(" \t")
        if not entry or entry.startswith("#"):
            continue
        problem = _line_problem(entry, number + 1, source)
        if problem:
            problems.append(problem)
            continue
        key, value = entry.split("=", 1)
        values[key] = value  # a later valid line for the same key wins
        applied.append((number + 1, key, value))
    return UcernvmBlock(values, tuple(problems), True, tuple(applied))


def _line_problem(entry: str, number: int, source: str) -> BlockProblem | None:
    if "=" not in entry:
        what = f"{entry!r} is not key=value"
        return BlockProblem(source, number, what, "write key=value, or start the line with #")
    key, value = entry.split("=", 1)
    problem = check_key_value(key, value)
    return BlockProblem(source, number, *problem, key=key) if problem else None


def check_key_value(key: str, value: str) -> tuple[str, str] | None:
    """(what, fix) when key=value is not valid in the block, else None."""
    if key not in UCERNVM_KEYS:
        close = difflib.get_close_matches(key, UCERNVM_KEYS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"unknown key {key!r}", f"{hint}known keys: {', '.join(UCERNVM_KEYS)}"
    is_valid, expected = UCERNVM_KEYS[key]
    if not value:
        return f"{key} has an empty value", f"give {expected}"
    if len(value) > VALUE_MAX_CHARS or not value.isascii() or not is_valid(value):
        return (
            f"{key}={value!r} is not valid",
            f"give {expected} ({VALUE_MAX_CHARS} characters at most)",
        )
    return None
