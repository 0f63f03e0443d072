"""The metadata services of the clouds (EC2 IMDSv2, OpenStack, GCE), as the guest reads them.

A channel of kind "service" (lab.build.context) is delivered by a metadata service on the
host's 127.0.0.1 (an ephemeral port), which the guest reaches at 169.254.169.254 through
QEMU's guestfwd. Each service serves a tree built from one Context (the same content the
channel's medium would carry, in its cloud's layout) and answers by its cloud's rules:

- ec2-imds: IMDSv2 as EC2 enforces it (a token by PUT, then GETs that carry it);
- openstack-metadata: Nova's /openstack/<version>/... and its EC2-compatible tree, plain GETs;
- gce-metadata: /computeMetadata/v1/ with the Metadata-Flavor: Google header, text or JSON.

``MetadataService`` is the HTTP server (a lab.services.base.Service): it records every
request (the evidence of what the guest asked), can be made slow (``delay_s``) or stopped
mid-run (a cloud whose metadata service is down).
"""

from __future__ import annotations

import base64
import contextlib
import email.message
import json
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit

from lab.build.context import (
    EC2_ACCOUNT,
    EC2_AMI_ID,
    EC2_API_VERSIONS,
    EC2_INSTANCE_TYPE,
    EC2_REGION,
    EC2_ZONE,
    GCE_PROJECT,
    GCE_PROJECT_NUMBER,
    GCE_SSH_USER,
    GCE_ZONE,
    GUEST_IPV4,
    GUEST_NETWORK,
    NOVA_EC2_VERSIONS,
    OPENSTACK_VERSIONS,
    Context,
    ContextError,
    channel_info,
    check_context,
    json_bytes,
    key_names,
    normalize_mac,
    openstack_version_files,
)
from lab.services.base import Service


@dataclass
class _Dir:
    """A directory of a metadata tree: entries are sub-directories or leaves (bytes)."""

    entries: dict[str, _Dir | bytes]
    listing: bytes | None = None  # what a GET of the directory answers, if not the names
    slash_dirs: bool = True  # list sub-directories as name/ (EC2 meta-data, GCE)
    verbatim_keys: bool = False  # GCE JSON: keys as given (attributes), not camelCased

    def lookup(self, path: str) -> _Dir | bytes | None:
        node: _Dir | bytes = self
        for part in filter(None, path.split("/")):
            if not isinstance(node, _Dir) or part not in node.entries:
                return None
            node = node.entries[part]
        return node

    def names(self) -> list[str]:
        slash = "/" if self.slash_dirs else ""
        return [
            name + slash if isinstance(node, _Dir) else name for name, node in self.entries.items()
        ]


def _tree(
    entries: Mapping[str, object],
    *,
    listing: bytes | None = None,
    slash_dirs: bool = True,
    verbatim_keys: bool = False,
) -> _Dir:
    """A _Dir from nested mappings; leaves become bytes."""
    converted: dict[str, _Dir | bytes] = {}
    for name, value in entries.items():
        if isinstance(value, _Dir | bytes):
            converted[name] = value
        elif isinstance(value, Mapping):
            converted[name] = _tree(value)
        else:
            converted[name] = str(value).encode()
    return _Dir(converted, listing, slash_dirs, verbatim_keys)


def _ec2_public_keys(context: Context) -> _Dir:
    """public-keys/ lists 0=name; cloud-init then reads 0/openssh-key."""
    names = key_names(context.ssh_public_keys)
    keys = {str(i): _tree({"openssh-key": key}) for i, key in enumerate(context.ssh_public_keys)}
    listing = "\n".join(f"{i}={name}" for i, name in enumerate(names))
    return _tree(keys, listing=listing.encode())


def _ec2_interface(context: Context, mac: str) -> dict[str, object]:
    return {
        "device-number": "0",
        "interface-id": "eni-0ucvm0000000000",
        "local-hostname": context.hostname,
        "local-ipv4s": GUEST_IPV4,
        "mac": mac,
        "owner-id": EC2_ACCOUNT,
        "security-group-ids": "sg-0ucvm0000000000",
        "security-groups": "default",
        "subnet-id": "subnet-0ucvm0000000000",
        "subnet-ipv4-cidr-block": GUEST_NETWORK,
        "vpc-id": "vpc-0ucvm0000000000",
        "vpc-ipv4-cidr-block": GUEST_NETWORK,
        "vpc-ipv4-cidr-blocks": GUEST_NETWORK,
    }


def _ec2_meta_data(context: Context, mac: str) -> _Dir:
    entries: dict[str, object] = {
        "ami-id": EC2_AMI_ID,
        "ami-launch-index": "0",
        "ami-manifest-path": "(unknown)",
        "block-device-mapping": {"ami": "/dev/xvda", "root": "/dev/xvda"},
        "hostname": context.hostname,
        "instance-action": "none",
        "instance-id": context.instance_id,
        "instance-life-cycle": "on-demand",
        "instance-type": EC2_INSTANCE_TYPE,
        "local-hostname": context.hostname,
        "local-ipv4": GUEST_IPV4,
        "mac": mac,
        "network": {"interfaces": {"macs": {mac: _ec2_interface(context, mac)}}},
        "placement": {"availability-zone": EC2_ZONE, "region": EC2_REGION},
        "profile": "default-hvm",
    }
    if context.ssh_public_keys:
        entries["public-keys"] = _ec2_public_keys(context)
    entries |= {
        "reservation-id": "r-0ucvm0000000000",
        "security-groups": "default",
        "services": {"domain": "amazonaws.com", "partition": "aws"},
    }
    return _tree(entries)


def _ec2_identity_document(context: Context) -> bytes:
    return json_bytes(
        {
            "accountId": EC2_ACCOUNT,
            "architecture": "x86_64",
            "availabilityZone": EC2_ZONE,
            "imageId": EC2_AMI_ID,
            "instanceId": context.instance_id,
            "instanceType": EC2_INSTANCE_TYPE,
            "kernelId": None,
            "pendingTime": "2000-01-01T00:00:00Z",
            "privateIp": GUEST_IPV4,
            "ramdiskId": None,
            "region": EC2_REGION,
            "version": "2017-09-30",
        }
    )


def _ec2_root(context: Context, mac: str, versions: tuple[str, ...]) -> _Dir:
    version: dict[str, object] = {
        "dynamic": {"instance-identity": {"document": _ec2_identity_document(context)}},
        "meta-data": _ec2_meta_data(context, mac),
    }
    if context.user_data:  # none: a 404, as EC2 answers
        version["user-data"] = context.user_data
    tree = _tree(version, slash_dirs=False)
    return _Dir(dict.fromkeys(versions, tree), slash_dirs=False)


def _openstack_root(context: Context, mac: str) -> _Dir:
    versions = {
        version: _tree(openstack_version_files(context, mac, version), slash_dirs=False)
        for version in OPENSTACK_VERSIONS
    }
    root = _ec2_root(context, mac, NOVA_EC2_VERSIONS)
    root.entries["openstack"] = _tree(versions, slash_dirs=False)
    return root


def _gce_root(context: Context, mac: str) -> _Dir:
    attributes: dict[str, str] = {}
    if context.ssh_public_keys:
        attributes["ssh-keys"] = "\n".join(f"{GCE_SSH_USER}:{k}" for k in context.ssh_public_keys)
    if context.user_data:
        try:
            attributes["user-data"] = context.user_data.decode("utf-8")
        except UnicodeDecodeError:  # a metadata value is text: binary goes base64
            attributes["user-data"] = base64.b64encode(context.user_data).decode()
            attributes["user-data-encoding"] = "base64"
    short_name = context.hostname.split(".")[0]
    fqdn = context.hostname
    if "." not in fqdn:
        fqdn = f"{fqdn}.{GCE_ZONE}.c.{GCE_PROJECT}.internal"
    project = f"projects/{GCE_PROJECT_NUMBER}"
    instance = {
        "attributes": _tree(attributes, verbatim_keys=True),
        "hostname": fqdn,
        "id": context.instance_id,
        "machine-type": f"{project}/machineTypes/e2-small",
        "name": short_name,
        "network-interfaces": {
            "0": {"ip": GUEST_IPV4, "mac": mac, "network": f"{project}/networks/default"}
        },
        "zone": f"{project}/zones/{GCE_ZONE}",
    }
    project_dir = {
        "attributes": _tree({}, verbatim_keys=True),
        "numeric-project-id": GCE_PROJECT_NUMBER,
        "project-id": GCE_PROJECT,
    }
    return _tree({"computeMetadata": {"v1": {"instance": instance, "project": project_dir}}})


# --- metadata services: the rules they answer by -------------------------------------------


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = ()


class _Responder(ABC):
    @abstractmethod
    def answer(
        self, method: str, path: str, query: dict[str, list[str]], headers: email.message.Message
    ) -> _Reply: ...


def _tree_reply(root: _Dir, path: str) -> _Reply:
    node = root.lookup(path)
    if node is None:
        return _Reply(404, b"Not Found")
    if isinstance(node, _Dir):
        return _Reply(
            200, node.listing if node.listing is not None else "\n".join(node.names()).encode()
        )
    content_type = "application/json" if path.endswith(".json") else "text/plain"
    return _Reply(200, node, content_type)


class _Ec2Imds(_Responder):
    """IMDSv2 as EC2 enforces it (HttpTokens=required)."""

    TOKEN_PATH = "/latest/api/token"
    TOKEN_HEADER = "X-aws-ec2-metadata-token"
    TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
    MAX_TTL_S = 21600

    def __init__(self, context: Context, mac: str) -> None:
        self._root = _ec2_root(context, mac, EC2_API_VERSIONS)
        self._tokens: dict[str, float] = {}  # token -> when it expires (monotonic)
        self._lock = threading.Lock()

    def answer(
        self, method: str, path: str, query: dict[str, list[str]], headers: email.message.Message
    ) -> _Reply:
        if path.rstrip("/") == self.TOKEN_PATH:
            return self._issue_token(headers) if method == "PUT" else _Reply(405)
        if method not in ("GET", "HEAD"):
            return _Reply(405)
        if not self._token_valid(headers.get(self.TOKEN_HEADER)):
            return _Reply(401, b"Unauthorized")
        return _tree_reply(self._root, path)

    def _issue_token(self, headers: email.message.Message) -> _Reply:
        ttl = headers.get(self.TTL_HEADER, "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= self.MAX_TTL_S:
            return _Reply(400, b"Bad Request")
        token = secrets.token_urlsafe(42)
        with self._lock:
            self._tokens[token] = time.monotonic() + int(ttl)
        return _Reply(200, token.encode(), headers=((self.TTL_HEADER, ttl),))

    def _token_valid(self, token: str | None) -> bool:
        with self._lock:
            return token is not None and self._tokens.get(token, 0.0) > time.monotonic()


class _OpenStackMetadata(_Responder):
    """Nova's metadata service: /openstack/... and the EC2-compatible tree, both plain GETs
    (cloud-init reads the EC2 tree of OpenStack without a token)."""

    def __init__(self, context: Context, mac: str) -> None:
        self._root = _openstack_root(context, mac)

    def answer(
        self, method: str, path: str, query: dict[str, list[str]], headers: email.message.Message
    ) -> _Reply:
        if method not in ("GET", "HEAD"):
            return _Reply(405)
        return _tree_reply(self._root, path)


def _camel(name: str) -> str:
    head, *rest = name.split("-")
    return head + "".join(part.capitalize() for part in rest)


def _gce_json(node: _Dir | bytes) -> object:
    if isinstance(node, bytes):
        return node.decode()
    return {
        (name if node.verbatim_keys else _camel(name)): _gce_json(child)
        for name, child in node.entries.items()
    }


def _gce_text(node: _Dir | bytes, prefix: str = "") -> Iterator[str]:
    if isinstance(node, bytes):
        yield f"{prefix} {node.decode()}"
        return
    for name, child in node.entries.items():
        yield from _gce_text(child, f"{prefix}/{name}".lstrip("/"))


class _GceMetadata(_Responder):
    FLAVOR = ("Metadata-Flavor", "Google")

    def __init__(self, context: Context, mac: str) -> None:
        self._root = _gce_root(context, mac)

    def answer(
        self, method: str, path: str, query: dict[str, list[str]], headers: email.message.Message
    ) -> _Reply:
        if headers.get("Metadata-Flavor") != "Google" or "X-Forwarded-For" in headers:
            return self._reply(403, b"Missing required header: Metadata-Flavor: Google\n")
        if method not in ("GET", "HEAD"):
            return self._reply(405, b"")
        node = self._root.lookup(path)
        if node is None:
            return self._reply(404, b"Not Found\n")
        recursive = query.get("recursive", ["false"])[-1].lower() == "true"
        alt = query.get("alt", ["json" if recursive else "text"])[-1]
        if isinstance(node, _Dir) and not recursive:
            names = node.names()
            if alt == "json":
                return self._reply(200, json.dumps(names).encode(), "application/json")
            return self._reply(200, "".join(f"{name}\n" for name in names).encode())
        if alt == "text":
            lines = _gce_text(node) if isinstance(node, _Dir) else [node.decode()]
            return self._reply(200, "\n".join(lines).encode())
        return self._reply(200, json.dumps(_gce_json(node)).encode(), "application/json")

    def _reply(self, status: int, body: bytes, content_type: str = "application/text") -> _Reply:
        return _Reply(status, body, content_type, headers=(self.FLAVOR,))


_RESPONDERS: dict[str, type[_Ec2Imds | _OpenStackMetadata | _GceMetadata]] = {
    "ec2-imds": _Ec2Imds,
    "openstack-metadata": _OpenStackMetadata,
    "gce-metadata": _GceMetadata,
}


# --- metadata services: the HTTP server ------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that connects and says nothing does not hold stop() forever

    def do_GET(self) -> None:
        self._answer()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _answer(self) -> None:
        service = self.server.service
        service._record_arrival(self.command, self.path)
        if not service._wait_delay():
            self.close_connection = True  # stopped while "slow": the answer never comes
            return
        length_text = self.headers.get("Content-Length") or "0"
        length = int(length_text) if length_text.isascii() and length_text.isdigit() else 0
        if length:
            self.rfile.read(length)
        url = urlsplit(self.path)
        reply = service._responder.answer(self.command, url.path, parse_qs(url.query), self.headers)
        service._record(self.command, self.path, reply.status)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it gave up
                self.wfile.write(reply.body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the evidence is MetadataService.requests


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() then joins every handler thread: none lingers

    def __init__(self, service: MetadataService) -> None:
        self.service = service
        super().__init__(("127.0.0.1", 0), _Handler)


class MetadataService(Service):
    """A platform's metadata service on 127.0.0.1 (an ephemeral port), for the guest at
    169.254.169.254 through QEMU's guestfwd. A service: leaving the ``with`` block stops the
    server and joins its threads. ``stop()`` makes it "down" mid-run (connections are
    refused); ``delay_s`` makes it slow (each answer comes that much later). Its server runs
    in the lab's process, so a dead run leaves none to sweep."""

    NAME = "the metadata service"

    def __init__(self, channel: str, context: Context, *, mac: str, delay_s: float = 0) -> None:
        info = channel_info(channel)
        if info.kind != "service":
            raise ContextError(f"{channel} is a medium, not a metadata service: use build_medium")
        check_context(context, info)
        self.channel = channel
        self.context = context
        self.delay_s = delay_s
        self._responder = _RESPONDERS[channel](context, normalize_mac(mac, info) or "")
        self._requests: list[tuple[str, str, int]] = []
        self._arrivals: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is None:
            self._server = _Server(self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"ucvm-{self.channel}-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering; idempotent. Requests still waiting out delay_s get no answer."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def running(self) -> bool:
        return self._thread is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise ContextError(f"{self.channel} service not started: use it in a with block")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path with query, status) of every answered request, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def arrivals(self) -> list[tuple[str, str]]:
        """(method, path with query) of every request received, answered or not (a slow
        service's client may give up before its answer)."""
        with self._lock:
            return list(self._arrivals)

    def _record_arrival(self, method: str, path: str) -> None:
        with self._lock:
            self._arrivals.append((method, path))

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))

    def _wait_delay(self) -> bool:
        """False when the service stopped while the answer was being delayed."""
        if self._stopping.is_set():
            return False
        return not (self.delay_s > 0 and self._stopping.wait(self.delay_s))
