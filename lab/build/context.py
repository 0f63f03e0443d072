"""Contextualization: the user-data channels of each platform, built from one Context.

A Context is what a user hands a platform at launch: an instance id, a hostname, SSH keys
and the user-data (cloud-config, a MIME multi-part message, and μCernVM's own
``[ucernvm-begin] ... [ucernvm-end]`` block). Each channel delivers it the way its platform
does: on a medium (an ISO the guest finds by its volume label, built here) or from a metadata
service on the host's 127.0.0.1 (a run-time service: lab.services.metadata, which serves the
content this module defines), which the guest reaches at 169.254.169.254 through QEMU's user
network. What each channel holds is what cloud-init 22.4 (Debian 12's, in the guest OS)
reads unmodified; tests/test_context.py runs cloud-init's own datasource code against it.

Where the boot loader looks, in this order (lab/build/initramfs/context); the first channel
that answers is used:

1. Media, by ISO 9660 volume id (32 bytes at byte offset 32808, see ``read_volume_id``):
   ``cidata`` (nocloud), ``config-2`` (config-drive), ``CONTEXT`` (opennebula), then the
   OVF transport ``OVF-TRANSPORT`` (ovf).
2. The metadata service at 169.254.169.254, only when the SMBIOS identity names a cloud
   (``SMBIOS_IDENTITY``), as cloud-init's ds-identify does: system vendor "Amazon EC2" or a
   product UUID starting ``ec2`` -> ec2-imds; product "Google Compute Engine" ->
   gce-metadata; product "OpenStack Nova" or "OpenStack Compute" -> openstack-metadata.

cloud-init itself finds the same channel: ds-identify enables NoCloud, ConfigDrive,
OpenNebula and OVF by those volume ids and Ec2, GCE and OpenStack by those SMBIOS fields.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

from lab import proc
from lab.build.userdata import UCERNVM_BEGIN, UCERNVM_END, check_key_value, valid_hostname
from lab.build.userdata import BlockProblem as BlockProblem
from lab.build.userdata import UcernvmBlock as UcernvmBlock
from lab.build.userdata import parse_ucernvm_block as parse_ucernvm_block


class ContextError(ValueError):
    """Bad context input (user-data over a platform's limit, a malformed part): names the
    file or channel, the place, and the fix."""


@dataclass(frozen=True)
class Context:
    instance_id: str
    hostname: str
    user_data: bytes  # as the user wrote it; each channel encodes it as its platform does
    ssh_public_keys: tuple[str, ...] = ()


# The most user-data each platform accepts, and what the limit counts (the lab refuses more
# before launch, as the platform would):
# | platform | limit | counted on |
# | EC2 RunInstances | 16 KiB | the raw bytes, before the base64 of the API (AWS's user guide:
#   "limited to 16 KB, in raw form, before it is base64-encoded") |
# | OpenStack Nova | 65,535 | the base64 text the API takes (4 * ceil(n / 3): ~48 KiB raw) |
# | GCE | 256 KiB | the metadata value: the text, or its base64 when it is not UTF-8 (as the
#   lab's gce-metadata channel stores binary user-data) |
USER_DATA_LIMITS: dict[str, int] = {
    "Amazon EC2": 16 * 1024,
    "OpenStack": 65535,
    "Google Compute Engine": 256 * 1024,
}
USER_DATA_COUNTED: dict[str, Literal["raw", "base64", "metadata value"]] = {
    "Amazon EC2": "raw",
    "OpenStack": "base64",
    "Google Compute Engine": "metadata value",
}

COUNTED_WORDS = {
    "raw": "the raw bytes, before base64",
    "base64": "the base64 text",
    "metadata value": "the metadata value",
}


def _base64_length(size: int) -> int:
    return 4 * -(-size // 3)


def _counted_size(platform: str, user_data: bytes) -> int:
    counted = USER_DATA_COUNTED.get(platform, "raw")
    if counted == "base64":
        return _base64_length(len(user_data))
    if counted == "metadata value":
        try:
            user_data.decode("utf-8")
        except UnicodeDecodeError:
            return _base64_length(len(user_data))
    return len(user_data)


def check_user_data_size(platform: str, user_data: bytes, source: str = "user-data") -> None:
    limit = USER_DATA_LIMITS.get(platform)
    if limit is None:
        return
    size = _counted_size(platform, user_data)
    if size > limit:
        counted = USER_DATA_COUNTED[platform]
        as_sent = "" if size == len(user_data) else f" ({size:,} as its {counted})"
        kib = f" ({limit // 1024} KiB)" if limit % 1024 == 0 else ""
        raise ContextError(
            f"{source}: {len(user_data):,} bytes{as_sent}, over {platform}'s user-data limit "
            f"of {limit:,} bytes{kib}, counted on {COUNTED_WORDS[counted]}; shorten it, "
            "or compress it (gzip) as cloud-init accepts"
        )


# --- channels ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    name: str
    kind: Literal["medium", "service"]
    platform: str  # as lab.targets.profiles names it (the support table's row)
    description: str
    volume_id: str = ""  # media only: the ISO 9660 volume id the guest finds it by


_CHANNELS = (
    Channel(
        "nocloud",
        "medium",
        "KVM",
        "NoCloud seed ISO: user-data, meta-data, network-config",
        "cidata",
    ),
    Channel(
        "config-drive",
        "medium",
        "OpenStack",
        "OpenStack config drive: openstack/<version>/meta_data.json, user_data, network_data.json",
        "config-2",
    ),
    Channel(
        "openstack-metadata",
        "service",
        "OpenStack",
        "Nova's metadata service: /openstack/<version>/... and its EC2-compatible tree",
    ),
    Channel(
        "ec2-imds",
        "service",
        "Amazon EC2",
        "EC2 instance metadata service, IMDSv2 (a token by PUT, then GETs carrying it)",
    ),
    Channel(
        "gce-metadata",
        "service",
        "Google Compute Engine",
        "GCE metadata server: /computeMetadata/v1/ with the Metadata-Flavor: Google header",
    ),
    Channel(
        "opennebula",
        "medium",
        "OpenNebula",
        "OpenNebula context ISO: context.sh of shell variables",
        "CONTEXT",
    ),
    Channel(
        "ovf",
        "medium",
        "VMware",
        "vSphere's OVF ISO transport: ovf-env.xml with a PropertySection",
        "OVF-TRANSPORT",
    ),
)
CHANNELS: tuple[str, ...] = tuple(channel.name for channel in _CHANNELS)
_BY_NAME = {channel.name: channel for channel in _CHANNELS}


def channel_info(name: str) -> Channel:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ContextError(
            f"unknown contextualization channel {name!r}; known: {', '.join(CHANNELS)}"
        ) from None


# The SMBIOS fields, as libvirt's <sysinfo type='smbios'> names them (<block>.<entry>), that
# make cloud-init 22.4 enable each service's datasource. What it reads, from
# /sys/class/dmi/id: Ec2 (ds-identify's ec2_identify_platform and DataSourceEc2.identify_aws)
# product_uuid and product_serial, which must both start with "ec2" and be equal (case
# aside); only then is the platform AWS and cloud-init asks for an IMDSv2 token (elsewhere it
# sends plain GETs, which IMDSv2 refuses). GCE: product_name "Google Compute Engine" (or a
# product_serial "GoogleCloud-*"). OpenStack: product_name "OpenStack Nova" or "OpenStack
# Compute" (or chassis_asset_tag the same). The other fields are what those clouds show;
# sys_vendor is what the boot loader tests for EC2.
SMBIOS_IDENTITY: dict[str, dict[str, str]] = {
    "ec2-imds": {
        "bios.vendor": "Amazon EC2",
        "system.manufacturer": "Amazon EC2",
        "system.product": "t3.micro",
        "system.uuid": "ec2",  # a prefix: smbios_sysinfo() sets uuid and serial to the UUID
        "chassis.asset": "Amazon EC2",
    },
    "gce-metadata": {
        "bios.vendor": "Google",
        "system.manufacturer": "Google",
        "system.product": "Google Compute Engine",
    },
    "openstack-metadata": {
        "system.manufacturer": "OpenStack Foundation",
        "system.product": "OpenStack Nova",
    },
}
EC2_UUID_PREFIX = "ec2"


def smbios_sysinfo(channel: str, domain_uuid: str) -> dict[str, str]:
    """The SMBIOS entries a domain with this UUID needs for the channel's datasource (none
    for media). EC2 needs the UUID to start with ec2 (see ``ec2_domain_uuid``) and repeats
    it as the serial number, as EC2's Nitro hypervisor does."""
    fields = dict(SMBIOS_IDENTITY.get(channel_info(channel).name, {}))
    if "system.uuid" in fields:
        if not domain_uuid.lower().startswith(EC2_UUID_PREFIX):
            raise ContextError(
                f"{channel}: domain UUID {domain_uuid} does not start with "
                f"{EC2_UUID_PREFIX!r}, so cloud-init would not take the guest for EC2; make it "
                "with lab.build.context.ec2_domain_uuid()"
            )
        fields["system.uuid"] = fields["system.serial"] = domain_uuid.lower()
    return fields


def ec2_domain_uuid(uuid: str) -> str:
    """The UUID with its first three hex digits replaced by ec2, as EC2 instances have."""
    return EC2_UUID_PREFIX + uuid.lower()[len(EC2_UUID_PREFIX) :]


# --- what every channel says, beside the Context ---------------------------------------

GUEST_IPV4 = "169.254.169.15"  # QEMU's user network (net=169.254.169.0/24) leases .15 first
GUEST_NETWORK = "169.254.169.0/24"
# A second guest address of the run's repository server, one that only user-data names
# (cvmfs_server=169.254.169.101): the context suite's proof that the key took effect.
# `ucvm-lab up` forwards it too, so that a context cell's user-data boots by hand as there.
CONTEXT_REPO_ADDRESS = "169.254.169.101:80"
EC2_AMI_ID = "ami-0ucvm000000000000"
EC2_INSTANCE_TYPE = "t3.micro"
EC2_REGION = "us-east-1"
EC2_ZONE = "us-east-1a"
EC2_ACCOUNT = "123456789012"
# cloud-init's Ec2 datasource asks for these in turn and crawls the first that answers; the
# EC2-compatible tree of OpenStack (and cloud-init's crawl of it) uses "latest".
EC2_API_VERSIONS = ("2021-03-23", "2018-09-24", "2016-09-02", "2009-04-04", "latest")
NOVA_EC2_VERSIONS = (
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "latest",
)
# The dated versions cloud-init 22.4 knows (it reads the newest one present, else latest).
OPENSTACK_VERSIONS = (
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "latest",
)
OPENSTACK_ZONE = "nova"
GCE_PROJECT = "ucvm-lab"
GCE_PROJECT_NUMBER = "123456789012"
GCE_ZONE = "europe-west1-b"
# cloud-init's GCE datasource keeps only the ssh-keys lines of user "cloudinit" or of the
# distribution's default user (Debian: "debian"); other users are the Google guest agent's.
GCE_SSH_USER = "cloudinit"
OVF_NAMESPACE = "http://schemas.dmtf.org/ovf/environment/1"
# Fixed ISO dates (2000-01-01): equal input gives equal bytes.
ISO_EPOCH = 946684800

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def check_context(context: Context, channel: Channel) -> None:
    if (
        not context.instance_id
        or not context.instance_id.isprintable()
        or any(c.isspace() for c in context.instance_id)
    ):
        raise ContextError(
            f"{channel.name}: instance id {context.instance_id!r} is empty or has blanks; "
            "give a printable id without spaces"
        )
    if not valid_hostname(context.hostname):
        raise ContextError(
            f"{channel.name}: hostname {context.hostname!r} is not a host name; use letters, "
            "digits and -, dot-separated labels of at most 63 characters (- not at a label's "
            "ends), 253 characters in all"
        )
    check_user_data_size(channel.platform, context.user_data, f"{channel.name} user-data")


def normalize_mac(mac: str | None, channel: Channel) -> str | None:
    if mac is None:
        return None
    if not _MAC.fullmatch(mac.lower()):
        raise ContextError(
            f"{channel.name}: MAC {mac!r} is not six colon-separated hex bytes "
            "(e.g. 52:54:00:12:34:56)"
        )
    return mac.lower()


def key_names(keys: tuple[str, ...]) -> list[str]:
    """A name per key, as the clouds list key pairs: the key's comment when it has one."""
    names = []
    for index, key in enumerate(keys):
        fields = key.split(None, 2)
        name = fields[2].strip() if len(fields) == 3 else ""
        names.append(name if name and name not in names else f"key-{index}")
    return names


# --- media ---------------------------------------------------------------------------------

# Network config version 2: DHCP on every NIC named e* (the guest has one). cloud-init 22.4's
# systemd-networkd renderer matches on the ethernets key itself ([Match] Name=<key>) and
# ignores match: name:, so the key must be the glob.
NOCLOUD_NETWORK_CONFIG = b"""\
version: 2
ethernets:
  "e*":
    match:
      name: "e*"
    dhcp4: true
"""


def _yaml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted one


def _nocloud_files(context: Context, mac: str | None) -> dict[str, bytes]:
    lines = [
        f"instance-id: {_yaml_string(context.instance_id)}",
        f"local-hostname: {_yaml_string(context.hostname)}",
    ]
    if context.ssh_public_keys:
        lines.append("public-keys:")
        lines.extend(f"  - {_yaml_string(key)}" for key in context.ssh_public_keys)
    return {
        "user-data": context.user_data,
        "meta-data": ("\n".join(lines) + "\n").encode(),
        "network-config": NOCLOUD_NETWORK_CONFIG,
    }


def _openstack_meta_data(context: Context) -> dict[str, object]:
    names = key_names(context.ssh_public_keys)
    pairs = list(zip(names, context.ssh_public_keys, strict=True))
    return {
        "uuid": context.instance_id,
        "name": context.hostname,
        "hostname": context.hostname,
        "launch_index": 0,
        "availability_zone": OPENSTACK_ZONE,
        "project_id": "ucvm-lab",
        "meta": {},
        "devices": [],
        "public_keys": dict(pairs),
        "keys": [{"name": name, "type": "ssh", "data": key} for name, key in pairs],
    }


def _openstack_network_data(mac: str) -> dict[str, object]:
    link = "tap-ucvm0"
    return {
        "links": [{"id": link, "type": "phy", "mtu": 1500, "ethernet_mac_address": mac}],
        "networks": [
            {"id": "network0", "type": "ipv4_dhcp", "link": link, "network_id": "ucvm-lab-net"}
        ],
        "services": [],
    }


def openstack_version_files(context: Context, mac: str | None, version: str) -> dict[str, bytes]:
    """One version's files, each from the version Nova added it in. network_data.json only
    with a MAC: cloud-init finds the NIC of a link by its MAC (a link without one is an
    error), and with no network_data.json it does DHCP on the first NIC."""
    files = {"meta_data.json": json_bytes(_openstack_meta_data(context))}
    if context.user_data:
        files["user_data"] = context.user_data
    if version >= "2013-10-17":  # "latest" sorts after every date
        files["vendor_data.json"] = b"{}"
    if version >= "2015-10-15" and mac:
        files["network_data.json"] = json_bytes(_openstack_network_data(mac))
    if version >= "2016-10-06":
        files["vendor_data2.json"] = b"{}"
    return files


def json_bytes(value: object) -> bytes:
    return json.dumps(value, indent=2).encode()


def _config_drive_files(context: Context, mac: str | None) -> dict[str, bytes]:
    return {
        f"openstack/{version}/{name}": content
        for version in OPENSTACK_VERSIONS
        for name, content in openstack_version_files(context, mac, version).items()
    }


def _sh_single_quoted(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _opennebula_files(context: Context, mac: str | None) -> dict[str, bytes]:
    # No ETH0_IP: cloud-init 22.4 turns any ETH<n>_IP* variable into a static address (from
    # the MAC when ETH0_IP is empty) and never into DHCP; without one it does DHCP.
    variables = {
        "DISK_ID": "1",
        "NETWORK": "YES",
        "SET_HOSTNAME": context.hostname,
        "TARGET": "hdb",
        "VMID": context.instance_id,
    }
    if mac:
        variables |= {"ETH0_MAC": mac, "ETH0_METHOD": "dhcp"}
    if context.ssh_public_keys:
        variables["SSH_PUBLIC_KEY"] = "\n".join(context.ssh_public_keys)
    if context.user_data:
        variables["USER_DATA"] = base64.b64encode(context.user_data).decode()
        variables["USERDATA_ENCODING"] = "base64"
    lines = ["# Context variables generated by OpenNebula"]
    lines += [f"{name}={_sh_single_quoted(value)}" for name, value in sorted(variables.items())]
    return {"context.sh": ("\n".join(lines) + "\n").encode()}


def _xml_attribute(value: str) -> str:
    # Always double quotes: the boot loader's sed reads oe:value="...". A newline would read
    # back as a space (attribute normalization): keep it as a character reference.
    entities = {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
    return '"' + escape(value, entities) + '"'


def _ovf_property(key: str, value: str) -> str:
    return f"      <Property oe:key={_xml_attribute(key)} oe:value={_xml_attribute(value)}/>"


def _ovf_files(context: Context, mac: str | None) -> dict[str, bytes]:
    properties = {"instance-id": context.instance_id, "hostname": context.hostname}
    if context.ssh_public_keys:  # one property: several keys go in it, one a line
        properties["public-keys"] = "\n".join(context.ssh_public_keys)
    if context.user_data:
        properties["user-data"] = base64.b64encode(context.user_data).decode()
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<Environment xmlns="{OVF_NAMESPACE}"',
        f'     xmlns:oe="{OVF_NAMESPACE}"',
        '     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"',
        f"     oe:id={_xml_attribute(context.hostname)}>",
        "   <PlatformSection>",
        "      <Kind>VMware ESXi</Kind>",
        "      <Vendor>VMware, Inc.</Vendor>",
        "      <Locale>en</Locale>",
        "   </PlatformSection>",
        "   <PropertySection>",
        *(_ovf_property(key, value) for key, value in properties.items()),
        "   </PropertySection>",
        "</Environment>",
    ]
    return {"ovf-env.xml": ("\n".join(lines) + "\n").encode()}


_MEDIUM_FILES = {
    "nocloud": _nocloud_files,
    "config-drive": _config_drive_files,
    "opennebula": _opennebula_files,
    "ovf": _ovf_files,
}


def medium_files(channel: str, context: Context, *, mac: str | None = None) -> dict[str, bytes]:
    """The files of a channel's medium, by path inside it."""
    info = channel_info(channel)
    if info.kind != "medium":
        raise ContextError(f"{channel} is a metadata service, not a medium: use MetadataService")
    check_context(context, info)
    return _MEDIUM_FILES[channel](context, normalize_mac(mac, info))


def build_medium(channel: str, context: Context, dest_dir: Path, *, mac: str | None = None) -> Path:
    """Write the channel's ISO (Rock Ridge and Joliet, as cloud-localds and Nova make them)
    to dest_dir/<channel>.iso and return its path. Equal input gives equal bytes."""
    files = medium_files(channel, context, mac=mac)
    dest_dir.mkdir(parents=True, exist_ok=True)
    iso = dest_dir / f"{channel}.iso"
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=f".{channel}-") as work:
        staging = Path(work) / "root"
        _stage(files, staging)
        _make_iso(staging, channel_info(channel).volume_id, Path(work) / "out.iso")
        os.replace(Path(work) / "out.iso", iso)
    return iso


def _stage(files: Mapping[str, bytes], staging: Path) -> None:
    for relative, content in files.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for path in [staging, *staging.rglob("*")]:
        os.utime(path, (ISO_EPOCH, ISO_EPOCH))


def _make_iso(staging: Path, volume_id: str, out: Path) -> None:
    # -r (not -R): owner root and modes 0444/0555 whatever the umask, so the bytes repeat;
    # SOURCE_DATE_EPOCH fixes the volume dates, the file dates come from the mtimes.
    command = ["xorriso", "-as", "mkisofs", "-quiet", "-V", volume_id, "-J", "-r"]
    command += ["-o", str(out), str(staging)]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(ISO_EPOCH)}
    result = proc.run(*command, env=env, check=False, error=ContextError)
    if result.returncode != 0:
        raise ContextError(
            f"xorriso failed making the {volume_id} ISO ({result.returncode}): "
            f"{result.stderr.strip()[-400:]}; is xorriso installed (scripts/setup.sh)?"
        )


def read_volume_id(iso: Path) -> str:
    """The ISO 9660 volume id, read where the boot loader reads it (byte 32808, 32 bytes)."""
    with iso.open("rb") as stream:
        stream.seek(32769)
        if stream.read(5) != b"CD001":
            raise ContextError(f"{iso}: no ISO 9660 primary volume descriptor at byte 32768")
        stream.seek(32808)
        return stream.read(32).decode("ascii", "replace").rstrip(" \0")


# --- μCernVM's block: the grammar is docs/user-data.md, the parser lab/build/userdata.py -----


def compose_user_data(cloud_config: str, ucernvm: Mapping[str, str]) -> bytes:
    """A MIME multi-part user-data: the cloud-config part, then μCernVM's block as a
    text/ucernvm part (7bit, so the boot loader finds the block in the raw text too).
    cloud-init 22.4 hands the cloud-config on and only logs a warning for text/ucernvm.
    The boundary comes from the content: equal input gives equal bytes."""
    problems = []
    for key, value in ucernvm.items():
        problem = check_key_value(key, value)
        if problem:
            problems.append(f"{key}: {problem[0]}; {problem[1]}")
    if problems:
        raise ContextError("μCernVM block: " + " | ".join(problems))
    block = "".join(
        [f"{UCERNVM_BEGIN}\n", *(f"{k}={v}\n" for k, v in ucernvm.items()), f"{UCERNVM_END}\n"]
    )
    charset = "us-ascii" if cloud_config.isascii() else "utf-8"
    message = MIMEMultipart()
    for content, subtype, filename, part_charset in (
        (cloud_config, "cloud-config", "cloud-config.txt", charset),
        (block, "ucernvm", "ucernvm.txt", "us-ascii"),
    ):
        part = MIMEText(content, subtype, part_charset)
        part.add_header("Content-Disposition", "attachment", filename=filename)
        message.attach(part)
    digest = hashlib.sha256((cloud_config + "\0" + block).encode()).hexdigest()[:32]
    message.set_boundary(f"===============ucvm{digest}==")
    return message.as_bytes()
