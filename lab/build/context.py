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


# The most user-data each platform accepts, in bytes as the user wrote it (before any
# base64 the API adds). The lab refuses more before launch, as the platform would.
USER_DATA_LIMITS: dict[str, int] = {
    "Amazon EC2": 16 * 1024,  # EC2 RunInstances: 16 KB
    "OpenStack": 65535,  # Nova: 65,535 bytes
    "Google Compute Engine": 256 * 1024,  # a metadata value: 256 KB
}


def check_user_data_size(platform: str, user_data: bytes, source: str = "user-data") -> None:
    limit = USER_DATA_LIMITS.get(platform)
    if limit is not None and len(user_data) > limit:
        raise ContextError(
            f"{source}: {len(user_data):,} bytes, over {platform}'s user-data limit of "
            f"{limit:,} bytes ({limit // 1024} KiB); shorten it, or compress it (gzip) as "
            "cloud-init accepts"
        )
