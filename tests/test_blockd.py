"""Host tests of ucvm-blockd (lab.build.blockd), the boot loader's lazy block client, against a
real nginx on 127.0.0.1.

`serve` needs /dev/nbd and root-only kernel features, so these tests read through `cat`, which
runs the same fetch, verify and cache code and writes the bytes to stdout.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import os
import random
import shlex
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.build import blockd as blockd_pkg
from lab.build.blockd import build_blockd
from lab.build.osrepo.keys import SigningKey
from lab.build.osrepo.manifest import signature_line

NGINX = Path("/usr/sbin/nginx")
BLOCK = 65536
LAST_BLOCK_BYTES = 12345
NBLOCKS = 41
IMAGE_BYTES = (NBLOCKS - 1) * BLOCK + LAST_BLOCK_BYTES  # the last block is short
TAMPERED_BLOCK = 7
SNAPSHOT_NAME = "prod-v1"
SYNC_PREFIX = "/.sync-"
INSTANCE = "4c4c4544-0042-3510-8052-b7c04f4e4a32"
EXIT_LOCAL, EXIT_UNREACHABLE, EXIT_HTTP, EXIT_VERIFY = 1, 2, 3, 4


# --------------------------------------------------------------------------------------------
# The binary, the image and the server


@pytest.fixture(scope="session")
def blockd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blockd(tmp_path_factory.mktemp("blockd"))


@dataclass(frozen=True)
class Snapshot:
    data: bytes
    hashes: bytes  # the raw SHA-256 of each block, concatenated (SHA.blocks)

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def block_hashes(data: bytes) -> bytes:
    return b"".join(
        hashlib.sha256(data[i : i + BLOCK]).digest() for i in range(0, len(data), BLOCK)
    )


@pytest.fixture(scope="session")
def snapshot() -> Snapshot:
    data = random.Random(4).randbytes(IMAGE_BYTES)
    return Snapshot(data, block_hashes(data))


@pytest.fixture
def repo(tmp_path: Path, snapshot: Snapshot) -> Path:
    """REPO/snapshots/SHA.img and SHA.blocks, plus a copy with one byte flipped (bad.img)."""
    snapshots = tmp_path / "repo" / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / f"{snapshot.sha}.img").write_bytes(snapshot.data)
    (snapshots / f"{snapshot.sha}.blocks").write_bytes(snapshot.hashes)
    bad = bytearray(snapshot.data)
    bad[TAMPERED_BLOCK * BLOCK + 100] ^= 0x01
    (snapshots / "bad.img").write_bytes(bytes(bad))
    (tmp_path / "repo" / "manifest").write_text("ucvm-manifest 1\n")
    return tmp_path / "repo"


@dataclass(frozen=True)
class Request:
    connection: int
    method: str
    uri: str
    status: int
    range: str
    user_agent: str
    instance: str
    body_bytes: int


@dataclass
class Nginx:
    port: int
    access_log: Path
    syncs: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def requests(self) -> list[Request]:
        """The access log so far, without the marker requests that settle it."""
        return [r for r in self._settled_log() if not r.uri.startswith(SYNC_PREFIX)]

    def _settled_log(self) -> list[Request]:
        # nginx logs a request just after its last byte is sent, so a client that has exited
        # may be ahead of the log. The one worker handles events in order: once a marker
        # request made now is logged, every earlier request is too.
        self.syncs += 1
        marker = f"{SYNC_PREFIX}{self.syncs}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", marker)
            connection.getresponse().read()  # a 404
        finally:
            connection.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            requests = self._read_log()
            if any(r.uri == marker for r in requests):
                return requests
            time.sleep(0.01)
        raise AssertionError(f"nginx did not log {marker}")

    def _read_log(self) -> list[Request]:
        out = []
        text = self.access_log.read_text() if self.access_log.exists() else ""
        for line in text.splitlines():
            conn, method, uri, status, rng, agent, instance, sent = shlex.split(line)
            out.append(
                Request(int(conn), method, uri, int(status), rng, agent, instance, int(sent))
            )
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_config(tmp: Path, root: Path, port: int) -> str:
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
daemon off;
master_process on;
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format ucvm '$connection $request_method $uri $status "$http_range" '
                    '"$http_user_agent" "$http_x_ucvm_instance" $body_bytes_sent';
    access_log {tmp}/access.log ucvm;
{temp_paths}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /unavailable {{ return 503; }}
        location /closing/ {{  # says "Connection: close" on every second response
            alias {root}/;
            keepalive_requests 2;
        }}
    }}
}}
"""


def wait_for_port(port: int, proc: subprocess.Popen[bytes], error_log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {error_log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nginx did not listen on {port}")


@pytest.fixture
def nginx(tmp_path: Path, repo: Path) -> Iterator[Nginx]:
    if not NGINX.exists():
        pytest.skip(f"{NGINX} is not installed")
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, repo, port))
    command = [str(NGINX), "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "error.log")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, tmp / "error.log")
        yield Nginx(port, tmp / "access.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# Running the client


def run(blockd: Path, *args: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(blockd), *map(str, args)], capture_output=True, timeout=120)


def errors(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    lines = result.stderr.decode().splitlines()
    assert all(line.startswith("ucvm-blockd: ") for line in lines), lines
    return lines


@dataclass
class Client:
    """`cat` of one snapshot with one cache directory."""

    blockd: Path
    nginx: Nginx
    hashes: Path
    cache: Path
    image: str
    size: int = IMAGE_BYTES

    def cat(self, offset: int, length: int, *extra: object) -> subprocess.CompletedProcess[bytes]:
        common = {
            "--url": self.nginx.url(self.image),
            "--size": self.size,
            "--block": BLOCK,
            "--hashes": self.hashes,
            "--cache": self.cache,
            "--name": SNAPSHOT_NAME,
            "--retries": 1,
        }
        options = [item for option in common.items() for item in option]
        return run(self.blockd, "cat", "--offset", offset, "--length", length, *options, *extra)

    def stats(self) -> dict[str, int]:
        pairs = (line.split() for line in (self.cache / "stats").read_text().splitlines())
        return {key: int(value) for key, value in pairs}

    def present(self) -> list[int]:
        return [i for i, flag in enumerate((self.cache / "map").read_bytes()) if flag == 1]


@pytest.fixture
def client(blockd: Path, nginx: Nginx, snapshot: Snapshot, tmp_path: Path) -> Client:
    hashes = tmp_path / "image.blocks"
    hashes.write_bytes(snapshot.hashes)
    return Client(blockd, nginx, hashes, tmp_path / "cache", f"snapshots/{snapshot.sha}.img")


def ranges(requests: list[Request]) -> list[str]:
    return [r.range for r in requests]


def byte_range(first_block: int, last_block: int) -> str:
    end = min((last_block + 1) * BLOCK, IMAGE_BYTES) - 1
    return f"bytes={first_block * BLOCK}-{end}"


# --------------------------------------------------------------------------------------------
# get


def test_get_downloads_the_file_with_the_headers(blockd: Path, nginx: Nginx, tmp_path: Path):
    out = tmp_path / "manifest.out"
    result = run(
        blockd, "get", nginx.url("manifest"), out, "--header", f"X-Ucvm-Instance: {INSTANCE}"
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"ucvm-manifest 1\n"
    assert not out.with_name("manifest.out.part").exists()
    [request] = nginx.requests()
    assert (request.method, request.uri, request.status) == ("GET", "/manifest", 200)
    assert (request.user_agent, request.instance) == ("ucvm-blockd", INSTANCE)
    assert request.body_bytes == len(b"ucvm-manifest 1\n")


def test_get_of_a_missing_file_exits_3(blockd: Path, nginx: Nginx, tmp_path: Path):
    out = tmp_path / "out"
    result = run(blockd, "get", nginx.url("no-such-file"), out)
    assert result.returncode == EXIT_HTTP
    [line] = errors(result)
    assert nginx.url("no-such-file") in line and "HTTP 404 Not Found" in line
    assert not out.exists() and not tmp_path.joinpath("out.part").exists()


def test_get_refuses_a_body_larger_than_max_bytes(blockd: Path, nginx: Nginx, tmp_path: Path):
    out = tmp_path / "out"
    size = len(b"ucvm-manifest 1\n")
    too_small = run(blockd, "get", nginx.url("manifest"), out, "--max-bytes", size - 1)
    assert too_small.returncode == EXIT_HTTP
    assert f"the body has {size} bytes, more than the {size - 1} expected" in errors(too_small)[-1]
    assert not out.exists() and not tmp_path.joinpath("out.part").exists()
    enough = run(blockd, "get", nginx.url("manifest"), out, "--max-bytes", size)
    assert enough.returncode == 0, enough.stderr
    assert out.read_bytes() == b"ucvm-manifest 1\n"


def test_get_retries_a_5xx_then_exits_2(blockd: Path, nginx: Nginx, tmp_path: Path):
    result = run(blockd, "get", nginx.url("unavailable"), tmp_path / "out", "--retries", 1)
    assert result.returncode == EXIT_UNREACHABLE
    lines = errors(result)
    assert "HTTP 503" in lines[0] and "retrying in 1 s (attempt 1 of 2)" in lines[0]
    assert f"server unreachable: {nginx.url('unavailable')} (2 attempts" in lines[-1]
    assert [r.status for r in nginx.requests()] == [503, 503]


def test_get_with_the_server_down_exits_2(blockd: Path, tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/manifest"  # nothing listens there
    result = run(blockd, "get", url, tmp_path / "out", "--retries", 1)
    assert result.returncode == EXIT_UNREACHABLE
    assert f"server unreachable: {url} (2 attempts" in errors(result)[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1/manifest", "https is not supported"),
        ("http://repo.example.org/manifest", "not a numeric IPv4 address"),
        ("http://127.0.0.1:99999/manifest", "port is not a number"),
        ("ftp://127.0.0.1/manifest", "expected http://A.B.C.D[:PORT]/path"),
    ],
)
def test_get_rejects_urls_it_cannot_serve(blockd: Path, tmp_path: Path, url: str, message: str):
    result = run(blockd, "get", url, tmp_path / "out")
    assert result.returncode == EXIT_LOCAL
    [line] = errors(result)
    assert message in line


# --------------------------------------------------------------------------------------------
# verify


def b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode()


MANIFEST_BODY = (
    "ucvm-manifest 1\n"
    "repository test\n"
    "serial 3\n"
    "published 2026-11-25T00:32:42Z\n"
    "default-branch prod\n"
    f"snapshot v1 prod 2026-11-25T00:30:00Z {'a' * 64} {IMAGE_BYTES} {BLOCK} {'b' * 64}\n"
    "branch prod v1\n"
).encode()


KeyPair = tuple[SigningKey, Path]


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    """The repository's key and the boot loader's repo.pub for it."""
    key = SigningKey.generate()
    pub = tmp_path / "repo.pub"
    pub.write_text(key.public_line() + "\n")
    return key, pub


def verify(
    blockd: Path, pub: Path, manifest: bytes, tmp_path: Path
) -> tuple[subprocess.CompletedProcess[bytes], Path]:
    signed = tmp_path / "manifest.signed"
    signed.write_bytes(manifest)
    body = tmp_path / "manifest.body"
    return run(blockd, "verify", pub, signed, body), body


def test_verify_accepts_a_good_signature(blockd: Path, keys: KeyPair, tmp_path: Path):
    key, pub = keys
    result, body = verify(blockd, pub, MANIFEST_BODY + signature_line(key, MANIFEST_BODY), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert body.read_bytes() == MANIFEST_BODY


def test_verify_refuses_a_tampered_body(blockd: Path, keys: KeyPair, tmp_path: Path):
    key, pub = keys
    tampered = MANIFEST_BODY.replace(b"serial 3", b"serial 4")
    result, body = verify(blockd, pub, tampered + signature_line(key, MANIFEST_BODY), tmp_path)
    assert result.returncode == EXIT_VERIFY
    [line] = errors(result)
    assert "manifest signature invalid" in line
    assert not body.exists()


def test_verify_refuses_another_key(blockd: Path, keys: KeyPair, tmp_path: Path):
    key, pub = keys
    other = SigningKey.generate()
    result, body = verify(
        blockd, pub, MANIFEST_BODY + signature_line(other, MANIFEST_BODY), tmp_path
    )
    assert result.returncode == EXIT_VERIFY
    [line] = errors(result)
    assert f"signed by key {other.keyid}, expected {key.keyid}" in line
    assert not body.exists()


def test_verify_refuses_an_unsigned_manifest(blockd: Path, keys: KeyPair, tmp_path: Path):
    _, pub = keys
    result, body = verify(blockd, pub, MANIFEST_BODY, tmp_path)
    assert result.returncode == EXIT_VERIFY
    [line] = errors(result)
    assert "manifest is not signed" in line
    assert not body.exists()


def test_verify_refuses_a_signature_that_is_not_last(blockd: Path, keys: KeyPair, tmp_path: Path):
    key, pub = keys
    manifest = MANIFEST_BODY + signature_line(key, MANIFEST_BODY) + b"branch evil v1\n"
    result, _ = verify(blockd, pub, manifest, tmp_path)
    assert result.returncode == EXIT_VERIFY
    assert "manifest signature invalid" in errors(result)[0]


def test_verify_refuses_a_damaged_key_file(blockd: Path, keys: KeyPair, tmp_path: Path):
    key, pub = keys
    pub.write_text(f"ed25519 {'0' * 16} {b64(key.public.raw)}\n")
    result, _ = verify(blockd, pub, MANIFEST_BODY + signature_line(key, MANIFEST_BODY), tmp_path)
    assert result.returncode == EXIT_LOCAL
    assert "does not match the key" in errors(result)[0]


# --------------------------------------------------------------------------------------------
# cat: fetching, verifying and caching blocks


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        pytest.param(0, BLOCK, id="one-whole-block"),
        pytest.param(BLOCK - 10, 2 * BLOCK + 20, id="across-two-boundaries"),
        pytest.param(IMAGE_BYTES - 100, 100, id="tail-of-the-short-last-block"),
        pytest.param(IMAGE_BYTES - LAST_BLOCK_BYTES - 5, LAST_BLOCK_BYTES + 5, id="into-last"),
        pytest.param(12345, 1, id="one-byte"),
        pytest.param(0, IMAGE_BYTES, id="whole-image"),
    ],
)
def test_cat_returns_exactly_the_bytes_asked_for(
    client: Client, snapshot: Snapshot, offset: int, length: int
):
    result = client.cat(offset, length)
    assert result.returncode == 0, result.stderr
    assert result.stdout == snapshot.data[offset : offset + length]
    first, last = offset // BLOCK, (offset + length - 1) // BLOCK
    # Only the blocks touched, in one Range request (they are contiguous and missing).
    requests = client.nginx.requests()
    assert ranges(requests) == [byte_range(first, last)]
    assert [r.status for r in requests] == [206]
    fetched = min((last + 1) * BLOCK, IMAGE_BYTES) - first * BLOCK
    assert client.stats() == {
        "cached_bytes": fetched,
        "fetched_bytes": fetched,
        "evicted_blocks": 0,
        "verify_failures": 0,
    }
    assert requests[0].body_bytes == fetched
    assert client.present() == list(range(first, last + 1))
    assert (client.cache / "data").stat().st_size == IMAGE_BYTES


def test_a_second_cat_with_the_same_cache_fetches_nothing(client: Client, snapshot: Snapshot):
    assert client.cat(0, IMAGE_BYTES).returncode == 0
    served = len(client.nginx.requests())
    again = client.cat(0, IMAGE_BYTES)
    assert again.returncode == 0, again.stderr
    assert again.stdout == snapshot.data
    assert client.stats()["fetched_bytes"] == 0
    assert client.stats()["cached_bytes"] == IMAGE_BYTES
    assert len(client.nginx.requests()) == served == 1


def test_missing_runs_are_fetched_on_one_kept_alive_connection(client: Client, snapshot: Snapshot):
    for block in (1, 3, 5):
        assert client.cat(block * BLOCK, BLOCK).returncode == 0
    before = len(client.nginx.requests())
    result = client.cat(0, IMAGE_BYTES)
    assert result.returncode == 0, result.stderr
    assert result.stdout == snapshot.data
    requests = client.nginx.requests()[before:]
    assert ranges(requests) == [
        byte_range(0, 0),
        byte_range(2, 2),
        byte_range(4, 4),
        byte_range(6, NBLOCKS - 1),
    ]
    assert len({r.connection for r in requests}) == 1
    assert client.stats()["fetched_bytes"] == IMAGE_BYTES - 3 * BLOCK


def test_a_connection_the_server_closes_is_replaced(client: Client, snapshot: Snapshot):
    client.image = f"closing/snapshots/{snapshot.sha}.img"
    for block in (1, 3, 5):
        assert client.cat(block * BLOCK, BLOCK).returncode == 0
    before = len(client.nginx.requests())
    result = client.cat(0, IMAGE_BYTES)
    assert result.returncode == 0, result.stderr
    assert result.stdout == snapshot.data
    connections = [r.connection for r in client.nginx.requests()[before:]]
    assert len(connections) == 4
    assert connections[0] == connections[1] != connections[2] == connections[3]


def test_the_header_goes_with_every_range_request(client: Client):
    assert client.cat(0, 10, "--header", f"X-Ucvm-Instance: {INSTANCE}").returncode == 0
    assert client.cat(3 * BLOCK, 10, "--header", f"X-Ucvm-Instance: {INSTANCE}").returncode == 0
    requests = client.nginx.requests()
    assert [(r.instance, r.user_agent) for r in requests] == [(INSTANCE, "ucvm-blockd")] * 2


def test_a_tampered_block_from_the_server_is_refused(client: Client):
    client.image = "snapshots/bad.img"
    result = client.cat(0, IMAGE_BYTES)
    assert result.returncode == EXIT_VERIFY
    assert result.stdout == b""
    refusal = (
        f"ucvm-blockd: block {TAMPERED_BLOCK} of {SNAPSHOT_NAME} failed verification "
        "(sha256 mismatch); refusing it"
    )
    assert errors(result)[-1] == refusal
    # Fetched once in the batch, then once more on its own: both copies failed.
    assert ranges(client.nginx.requests()) == [
        byte_range(0, NBLOCKS - 1),
        byte_range(TAMPERED_BLOCK, TAMPERED_BLOCK),
    ]
    assert client.stats()["verify_failures"] == 2
    assert client.stats()["fetched_bytes"] == IMAGE_BYTES + BLOCK
    assert client.present() == list(range(TAMPERED_BLOCK))  # the good blocks before it


def test_a_corrupt_cache_block_is_dropped_and_fetched_again(client: Client, snapshot: Snapshot):
    assert client.cat(0, IMAGE_BYTES).returncode == 0
    with (client.cache / "data").open("r+b") as data:
        data.seek(3 * BLOCK + 5)
        byte = data.read(1)
        data.seek(3 * BLOCK + 5)
        data.write(bytes([byte[0] ^ 0xFF]))
    result = client.cat(2 * BLOCK, 3 * BLOCK)
    assert result.returncode == 0, result.stderr
    assert result.stdout == snapshot.data[2 * BLOCK : 5 * BLOCK]
    [line] = errors(result)
    assert f"cached block 3 of {SNAPSHOT_NAME} failed verification" in line
    assert ranges(client.nginx.requests())[-1] == byte_range(3, 3)
    assert client.stats() == {
        "cached_bytes": IMAGE_BYTES,
        "fetched_bytes": BLOCK,
        "evicted_blocks": 0,
        "verify_failures": 1,
    }
    again = client.cat(3 * BLOCK, BLOCK)
    assert again.stdout == snapshot.data[3 * BLOCK : 4 * BLOCK]
    assert client.stats()["fetched_bytes"] == 0


def test_cache_max_evicts_the_least_recently_used_blocks(client: Client, snapshot: Snapshot):
    cache_max = 4 * BLOCK
    result = client.cat(0, IMAGE_BYTES, "--cache-max", cache_max)
    assert result.returncode == 0, result.stderr
    assert result.stdout == snapshot.data
    stats = client.stats()
    assert stats["evicted_blocks"] == NBLOCKS - 4
    assert stats["cached_bytes"] == 3 * BLOCK + LAST_BLOCK_BYTES
    assert client.present() == list(range(NBLOCKS - 4, NBLOCKS))
    data = client.cache / "data"
    assert data.stat().st_size == IMAGE_BYTES
    assert data.stat().st_blocks * 512 <= cache_max  # evicted blocks are holes
    # Reading an evicted block evicts the least recently used of the four kept.
    assert client.cat(0, 10, "--cache-max", cache_max).stdout == snapshot.data[:10]
    assert client.present() == [0, *range(NBLOCKS - 3, NBLOCKS)]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        pytest.param(NBLOCKS, "HTTP 416 Requested Range Not Satisfiable", id="past-the-file"),
        pytest.param(NBLOCKS - 1, f"got {LAST_BLOCK_BYTES} bytes", id="short-answer"),
    ],
)
def test_a_range_the_server_cannot_serve_exits_3(
    client: Client, snapshot: Snapshot, block: int, message: str
):
    # The client believes in one more block than the served file has.
    client.size = IMAGE_BYTES + BLOCK
    client.hashes.write_bytes(block_hashes(snapshot.data + bytes(BLOCK)))
    result = client.cat(block * BLOCK, 10)
    assert result.returncode == EXIT_HTTP
    [line] = errors(result)
    assert message in line
    assert client.stats()["fetched_bytes"] == 0


def test_a_hashes_file_of_the_wrong_size_is_refused(client: Client):
    client.hashes.write_bytes(client.hashes.read_bytes()[:-32])
    result = client.cat(0, 10)
    assert result.returncode == EXIT_LOCAL
    [line] = errors(result)
    assert f"has {(NBLOCKS - 1) * 32} bytes, expected {NBLOCKS * 32}" in line
    assert client.nginx.requests() == []


def test_cat_past_the_end_of_the_image_is_refused(client: Client):
    result = client.cat(IMAGE_BYTES - 10, 11)
    assert result.returncode == EXIT_LOCAL
    assert "reaches past the end of the image" in errors(result)[0]


def test_a_cache_in_use_is_refused(client: Client):
    assert client.cat(0, 10).returncode == 0
    with (client.cache / "map").open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = client.cat(0, 10)
    assert result.returncode == EXIT_LOCAL
    assert "is in use by another ucvm-blockd" in errors(result)[0]


# --------------------------------------------------------------------------------------------
# kexec and disconnect: on the host, only what fails before the kernel would act
#
# kexec is never called here with a real kernel: only with files that cannot load (the kernel
# refuses them before anything is loaded) and always with --load-only, so even a load that
# succeeded could not reboot the host. disconnect is only given devices that are not nbd
# devices, which it refuses from stat() without opening them.

KEXEC_USAGE = "(ucvm-blockd kexec KERNEL INITRD CMDLINE [--load-only])"


@pytest.fixture
def not_a_kernel(tmp_path: Path) -> tuple[Path, Path]:
    """A 'kernel' of random bytes (no bzImage header) and a small 'initrd'."""
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(random.Random(12).randbytes(8192))
    initrd.write_bytes(b"not a cpio archive\n")
    return kernel, initrd


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], f"kexec: expected 3 arguments, got 0 {KEXEC_USAGE}", id="nothing"),
        pytest.param(["k", "i"], f"kexec: expected 3 arguments, got 2 {KEXEC_USAGE}", id="two"),
        pytest.param(["k", "i", "c", "d"], "kexec: unexpected argument 'd'", id="four"),
        pytest.param(["k", "i", "c", "--load-only=yes"], "--load-only takes no value", id="value"),
        pytest.param(["k", "i", "c", "--load-only", "--load-only"], "--load-only given twice"),
        pytest.param(["k", "i", "c", "--nbd", "/dev/nbd0"], "kexec: unknown option --nbd"),
    ],
)
def test_kexec_usage_errors(blockd: Path, args: list[str], message: str):
    result = run(blockd, "kexec", *args)
    assert result.returncode == EXIT_LOCAL
    [line] = errors(result)
    assert message in line
    assert result.stdout == b""


@pytest.mark.parametrize("missing", ["kernel", "initrd"])
def test_kexec_names_a_missing_file(
    blockd: Path, not_a_kernel: tuple[Path, Path], tmp_path: Path, missing: str
):
    kernel, initrd = not_a_kernel
    gone = tmp_path / f"no-{missing}"
    args = (gone, initrd) if missing == "kernel" else (kernel, gone)
    result = run(blockd, "kexec", *args, "console=ttyS0", "--load-only")
    assert result.returncode == EXIT_LOCAL
    [line] = errors(result)
    assert line == f"ucvm-blockd: kexec: cannot open the {missing} {gone}: {os.strerror(2)}"
    assert result.stdout == b""


def test_kexec_refuses_a_file_that_is_not_a_regular_file(
    blockd: Path, not_a_kernel: tuple[Path, Path], tmp_path: Path
):
    kernel, _ = not_a_kernel
    empty = tmp_path / "empty.img"
    empty.touch()
    for initrd in (Path("/dev/null"), tmp_path, empty):
        result = run(blockd, "kexec", kernel, initrd, "console=ttyS0", "--load-only")
        assert result.returncode == EXIT_LOCAL
        [line] = errors(result)
        assert f"the initrd {initrd} is not a regular non-empty file" in line


def test_kexec_refuses_a_command_line_the_kernel_cannot_take(
    blockd: Path, not_a_kernel: tuple[Path, Path]
):
    cmdline = "x" * 2048
    result = run(blockd, "kexec", *not_a_kernel, cmdline, "--load-only")
    assert result.returncode == EXIT_LOCAL
    [line] = errors(result)
    assert "CMDLINE has 2048 bytes, more than the 2047 the kernel takes" in line


def test_kexec_of_a_file_that_is_not_a_kernel_fails_with_the_kernel_s_reason(
    blockd: Path, not_a_kernel: tuple[Path, Path]
):
    # The kernel refuses it: ENOEXEC where kexec_file_load exists and root may call it, EPERM
    # elsewhere, ENOSYS on a kernel without it. The message names the files and the errno.
    kernel, initrd = not_a_kernel
    result = run(blockd, "kexec", kernel, initrd, "console=ttyS0", "--load-only")
    assert result.returncode == EXIT_LOCAL
    assert b"loaded" not in result.stdout
    [line] = errors(result)
    assert f"kexec: kexec_file_load of {kernel} with {initrd} failed: " in line
    reasons = {
        "Exec format error": "not a bzImage",
        "Operation not permitted": "needs root",
        "Function not implemented": "CONFIG_KEXEC_FILE",
    }
    assert any(f"{errno_text} (" in line and hint in line for errno_text, hint in reasons.items())


def test_disconnect_needs_the_device(blockd: Path):
    result = run(blockd, "disconnect")
    assert result.returncode == EXIT_LOCAL
    [line] = errors(result)
    assert "disconnect: missing --nbd (ucvm-blockd disconnect --nbd /dev/nbdN)" in line


def test_disconnect_refuses_what_is_not_an_nbd_device(blockd: Path, tmp_path: Path):
    regular = tmp_path / "nbd0"
    regular.touch()
    refusals = {
        tmp_path / "missing": "cannot find {dev}: No such file or directory",
        regular: "{dev} is not a block device, so not an nbd device",
        Path("/dev/null"): "{dev} is not a block device, so not an nbd device",
    }
    if os.geteuid() == 0:  # a loop device's node, never opened: refused from stat() alone
        loop = tmp_path / "loop"
        os.mknod(loop, 0o600 | stat.S_IFBLK, os.makedev(7, 250))
        refusals[loop] = "{dev} is not an nbd device (block device 7:250; nbd devices have major"
    for dev, message in refusals.items():
        result = run(blockd, "disconnect", "--nbd", dev)
        assert result.returncode == EXIT_LOCAL, dev
        [line] = errors(result)
        assert message.format(dev=dev) in line


def test_help_and_the_unknown_command_name_kexec_and_disconnect(blockd: Path):
    usage = run(blockd, "--help").stdout.decode()
    assert "ucvm-blockd kexec KERNEL INITRD CMDLINE [--load-only]" in usage
    assert "ucvm-blockd disconnect --nbd /dev/nbdN" in usage
    [line] = errors(run(blockd, "reboot"))
    assert "expected get, verify, serve, cat, disconnect or kexec" in line


def test_a_build_failure_names_the_compiler_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    broken = tmp_path / "broken.c"
    broken.write_text("int main(void) { return undeclared; }\n")
    monkeypatch.setattr(blockd_pkg, "BLOCKD_SOURCE", broken)
    with pytest.raises(RuntimeError, match="undeclared"):
        build_blockd(tmp_path / "out")
    assert not (tmp_path / "out" / "ucvm-blockd").exists()
