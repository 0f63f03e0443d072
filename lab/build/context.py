"""Contextualization: the user-data channels of each platform, built from one Context.

A Context is what a user hands a platform at launch: an instance id, a hostname, SSH keys
and the user-data (cloud-config, a MIME multi-part message, and μCernVM's own
``[ucernvm-begin] ... [ucernvm-end]`` block). Each channel delivers it the way its platform
does: on a medium (an ISO the guest finds by its volume label) or from a metadata service
on the host's 127.0.0.1, which the guest reaches at 169.254.169.254 through QEMU's user
network.
"""

from __future__ import annotations

from dataclasses import dataclass


class ContextError(ValueError):
    """Bad context input (user-data over a platform's limit, a malformed part): names the
    file or channel, the place, and the fix."""


@dataclass(frozen=True)
class Context:
    instance_id: str
    hostname: str
    user_data: bytes  # as the user wrote it; each channel encodes it as its platform does
    ssh_public_keys: tuple[str, ...] = ()
