"""lab.build.context: every channel is read back by the real cloud-init 22.4 of the guest OS.

cloud-init is Debian 12's package and its Python dependencies, fetched with `apt-get download`
and unpacked (not installed) into a cache under /var/tmp; it runs under Debian's python3, as
in the guest. Its own datasource classes read our media (unpacked where cloud-init looks for a
seed: the same reader it runs on the mounted ISO) and our services (real HTTP on 127.0.0.1,
the address set through the datasources' own settings); its own ds-identify decides which
datasource the guest gets. Where the guest's view differs from this host's, the probe says so:
cloud-init's DMI reader is pointed at an SMBIOS tree made from SMBIOS_IDENTITY (a guest sees
its SMBIOS in /sys/class/dmi/id), and told it is not in a container (this host is one).
"""

from __future__ import annotations

import base64
import email
import gzip
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from lab.build import context as ctx
from lab.build import userdata
from lab.build.context import Context, ContextError
from lab.services.metadata import MetadataService

CLOUD_INIT_CACHE = Path("/var/tmp/ucvm-lab-cache/cloud-init-debian12")
# cloud-init and its Python dependencies (Debian 12's Depends, those cloud-init imports)
DEBIAN_PACKAGES = (
    "cloud-init",
    "python3-attr",
    "python3-certifi",
    "python3-chardet",
    "python3-charset-normalizer",
    "python3-configobj",
    "python3-idna",
    "python3-jinja2",
    "python3-json-pointer",
    "python3-jsonpatch",
    "python3-jsonschema",
    "python3-markupsafe",
    "python3-netifaces",
    "python3-pyrsistent",
    "python3-requests",
    "python3-six",
    "python3-urllib3",
    "python3-yaml",
)
MAC = "52:54:00:12:34:56"
GUEST_NICS = {MAC: "ens3"}  # the NIC the guest's kernel would name
DATASOURCES = {
    "nocloud": "NoCloud",
    "config-drive": "ConfigDrive",
    "openstack-metadata": "OpenStack",
    "ec2-imds": "Ec2",
    "gce-metadata": "GCE",
    "opennebula": "OpenNebula",
    "ovf": "OVF",
}
# Where cloud-init looks for each medium's files as a seed, under its cloud_dir
SEED_DIRS = {
    "nocloud": "seed/nocloud",
    "config-drive": "seed/config_drive",
    "opennebula": "seed/opennebula",
    "ovf": "seed",
}
# NoCloud: the seed only, not this host's disks. OpenNebula: cloud-init parses context.sh
# with bash as user nobody through sudo (the guest OS needs sudo); here as ourselves.
MEDIUM_DS_CFG = {"nocloud": {"fs_label": None}, "opennebula": {"parseuser": None}}
# How the kernel shows libvirt's SMBIOS entries in /sys/class/dmi/id
SYSFS_DMI = {
    "bios.vendor": "bios_vendor",
    "system.manufacturer": "sys_vendor",
    "system.product": "product_name",
    "system.serial": "product_serial",
    "system.uuid": "product_uuid",
    "chassis.asset": "chassis_asset_tag",
}
QEMU_SMBIOS = {
    "bios.vendor": "SeaBIOS",
    "system.manufacturer": "QEMU",
    "system.product": "Standard PC (i440FX + PIIX, 1996)",
}
KEYS = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1Y3ZtLWxhYi10ZXN0LWtleS0wMDAwMDAwMDAw ops@lab",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDdWN2bS1sYWItdGVzdC1rZXktMQ== backup",
)
CLOUD_CONFIG = """#cloud-config
write_files:
  - path: /etc/ucvm-motd
    content: "contextualized: café"
runcmd:
  - [touch, /root/contextualized]
"""
UCERNVM = {"cvmfs_server": "169.254.169.101", "cvmfs_tag": "previous", "resize_rootfs": "off"}


def mime_context() -> Context:
    user_data = ctx.compose_user_data(CLOUD_CONFIG, UCERNVM)
    return Context("i-0ucvm0123456789ab", "ucvm-ctx", user_data, KEYS)


def gzip_context() -> Context:  # binary user-data: every channel must keep the bytes
    user_data = gzip.compress(CLOUD_CONFIG.encode(), mtime=0)
    return Context("4b1c2e0a-7d3f-4e59-9a61-0c5d8e2f1a3b", "ucvm-gz", user_data, KEYS[:1])


CONTEXTS = {"mime": mime_context, "gzip": gzip_context}


# --- cloud-init, as the guest has it -----------------------------------------------------


@dataclass(frozen=True)
class CloudInit:
    root: Path  # the unpacked packages

    @property
    def dist_packages(self) -> Path:
        return self.root / "usr/lib/python3/dist-packages"

    @property
    def ds_identify(self) -> Path:
        return self.root / "usr/lib/cloud-init/ds-identify"

    @property
    def python(self) -> str:
        return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

    @property
    def version(self) -> str:
        text = (self.dist_packages / "cloudinit/version.py").read_text()
        return text.split('__VERSION__ = "', 1)[1].split('"', 1)[0]


def apt_download(names: tuple[str, ...], dest: Path) -> None:
    command = ["apt-get", "download", *names]
    result = subprocess.run(command, cwd=dest, capture_output=True, text=True, check=False)
    if result.returncode != 0:  # a machine whose package lists were never fetched
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=True)
        subprocess.run(command, cwd=dest, capture_output=True, text=True, check=True)


def unpack_cloud_init(root: Path) -> None:
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    debs = staging / "debs"
    debs.mkdir(parents=True)
    apt_download(DEBIAN_PACKAGES, debs)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging / "root")], check=True)
    os.replace(staging / "root", root)
    shutil.rmtree(staging)


@pytest.fixture(scope="session")
def cloud_init() -> CloudInit:
    root = CLOUD_INIT_CACHE / "root"
    CLOUD_INIT_CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(CLOUD_INIT_CACHE / "lock"):
        if not root.is_dir():
            unpack_cloud_init(root)
    found = CloudInit(root)
    assert found.version.startswith("22.4"), f"Debian 12 ships cloud-init 22.4, got {found.version}"
    return found


# The probe runs inside cloud-init's Python: one datasource's get_data(), or the init stage's
# user-data consumption. Handlers go on the root logger after the imports, because
# cloudinit.log resets logging when it is imported.
PROBE = r"""
import base64, functools, importlib, json, logging, os, sys

args = json.loads(sys.argv[1])
from cloudinit import distros, dmi, helpers, stages, temp_utils
from cloudinit.net import network_state, networkd
from cloudinit.settings import PER_INSTANCE
from cloudinit.sources import DataSourceEc2
from cloudinit.sources.helpers import ec2, openstack

records = []
class Collect(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.getMessage()])
logging.getLogger().addHandler(Collect(logging.WARNING))

dmi.DMI_SYS_PATH = args["dmi"]
dmi.is_container = lambda: False
tmp = args["tmp"]
temp_utils._ROOT_TMPDIR = f"{tmp}/tmp"  # as root, cloud-init's temporary files go to /run
temp_utils._EXE_ROOT_TMPDIR = f"{tmp}/exe-tmp"

def render_networkd(config):
    if not config:
        return None
    state = network_state.parse_net_config_data(config)
    return networkd.Renderer({})._render_content(state)

def network_config(ds, name, nics):
    if name == "Ec2":
        return DataSourceEc2.convert_ec2_metadata_network_config(
            ds.metadata["network"], macs_to_nics=nics)
    if name == "OpenStack":
        return openstack.convert_net_json(ds.network_json, known_macs=nics)
    ds.known_macs = nics  # ConfigDrive's own way to be told the NICs
    return ds.network_config

def datasource():
    name = args["datasource"]
    if "ec2_address" in args:  # OpenStack reads its EC2 tree at the fixed 169.254.169.254
        ec2.get_instance_metadata = functools.partial(
            ec2.get_instance_metadata, metadata_address=args["ec2_address"])
    paths = helpers.Paths({"cloud_dir": f"{tmp}/cloud", "run_dir": f"{tmp}/run"})
    distro = distros.fetch("debian")("debian", {}, paths)
    module = importlib.import_module(f"cloudinit.sources.DataSource{name}")
    sys_cfg = {"datasource_list": [name, "None"], "datasource": {name: args["ds_cfg"]}}
    ds = getattr(module, f"DataSource{name}")(sys_cfg, distro, paths)
    if not ds.get_data():
        return {"found": False, "records": records}
    user_data = ds.get_userdata_raw() or b""
    return {
        "found": True,
        "records": records,
        "instance_id": ds.get_instance_id(),
        "hostname": ds.get_hostname().hostname,
        "keys": ds.get_public_ssh_keys(),
        "user_data": base64.b64encode(
            user_data.encode() if isinstance(user_data, str) else user_data).decode(),
        "metadata": ds.metadata,
        "networkd": render_networkd(network_config(ds, name, args["nics"])),
    }

def consume_user_data():
    config = {
        "datasource_list": ["NoCloud", "None"],
        "datasource": {"NoCloud": {"fs_label": None}},  # the seed only, not the host's disks
        "def_log_file": f"{tmp}/cloud-init.log",
        "syslog_fix_perms": None,
        "system_info": {"distro": "debian",
                        "paths": {"cloud_dir": f"{tmp}/cloud", "run_dir": f"{tmp}/run"}},
    }
    with open(f"{tmp}/cloud.cfg", "w") as stream:
        json.dump(config, stream)
    os.environ["CLOUD_CFG"] = f"{tmp}/cloud.cfg"
    init = stages.Init(ds_deps=["FILESYSTEM"])
    init.read_cfg()
    init.initialize()
    init.fetch(existing="trust")
    instance_id = init.instancify()
    init.update()
    init.consume_data(PER_INSTANCE)  # main_init counts an error only if this raises
    with open(init.paths.get_ipath("cloud_config")) as stream:
        cloud_config = stream.read()
    return {"instance_id": instance_id, "cloud_config": cloud_config, "records": records}

mode = {"datasource": datasource, "consume_user_data": consume_user_data}[args["mode"]]
print(json.dumps(mode(), default=repr))
"""


def run_probe(cloud_init: CloudInit, workdir: Path, **args: object) -> dict:
    # BLKID_FILE: cloud-init's blkid calls keep their cache here, not in the host's /run
    env = {**os.environ, "PYTHONPATH": str(cloud_init.dist_packages)}
    env["BLKID_FILE"] = str(workdir / "blkid.tab")
    command = [cloud_init.python, "-c", PROBE, json.dumps({"tmp": str(workdir), **args})]
    result = subprocess.run(
        command, env=env, cwd=workdir, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def extract_iso(iso: Path, dest: Path) -> None:
    """Unpack the ISO as the guest's kernel mounts it (Rock Ridge names)."""
    dest.mkdir(parents=True, exist_ok=True)
    command = ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(dest)]
    subprocess.run(command, capture_output=True, check=True)


def guest_smbios(channel: str) -> dict[str, str]:
    domain_uuid = str(uuid.uuid4())
    if channel == "ec2-imds":
        domain_uuid = ctx.ec2_domain_uuid(domain_uuid)
    return {**QEMU_SMBIOS, "system.uuid": domain_uuid, **ctx.smbios_sysinfo(channel, domain_uuid)}


def write_dmi(root: Path, smbios: dict[str, str]) -> Path:
    dmi = root / "sys/class/dmi/id"
    dmi.mkdir(parents=True, exist_ok=True)
    for entry, value in smbios.items():
        (dmi / SYSFS_DMI[entry]).write_text(value + "\n")
    return dmi


# --- the channels, read by cloud-init -----------------------------------------------------


def read_with_cloud_init(
    cloud_init: CloudInit, channel: str, context: Context, workdir: Path
) -> dict:
    dmi = write_dmi(workdir, guest_smbios(channel))
    probe = {"mode": "datasource", "datasource": DATASOURCES[channel], "dmi": str(dmi)}
    probe["nics"] = GUEST_NICS
    if channel in SEED_DIRS:
        iso = ctx.build_medium(channel, context, workdir / "media", mac=MAC)
        extract_iso(iso, workdir / "cloud" / SEED_DIRS[channel])
        ds_cfg = MEDIUM_DS_CFG.get(channel, {})
        return run_probe(cloud_init, workdir, ds_cfg=ds_cfg, **probe)
    with MetadataService(channel, context, mac=MAC) as service:
        ds_cfg = {
            "gce-metadata": {"metadata_url": f"{service.url}/computeMetadata/v1/", "retries": 0},
        }.get(channel, {"metadata_urls": [service.url], "max_wait": 10, "timeout": 5})
        if channel == "openstack-metadata":
            probe["ec2_address"] = service.url  # the guest reaches it there through guestfwd
        return run_probe(cloud_init, workdir, ds_cfg=ds_cfg, **probe)


@pytest.mark.parametrize("context_name", sorted(CONTEXTS))
@pytest.mark.parametrize("channel", ctx.CHANNELS)
def test_cloud_init_reads_the_context_from_every_channel(
    cloud_init: CloudInit, channel: str, context_name: str, tmp_path: Path
) -> None:
    context = CONTEXTS[context_name]()
    seen = read_with_cloud_init(cloud_init, channel, context, tmp_path)

    assert seen["found"], seen["records"]
    assert base64.b64decode(seen["user_data"]) == context.user_data
    assert seen["hostname"] == context.hostname
    # OVF has one public-keys property: the keys ride in it one a line
    assert "\n".join(seen["keys"]).splitlines() == list(context.ssh_public_keys)
    if channel == "opennebula":  # cloud-init 22.4 has no instance id from context.sh
        assert seen["instance_id"] == "iid-dsopennebula"
        assert seen["metadata"]["VMID"] == context.instance_id
    else:
        assert seen["instance_id"] == context.instance_id
    assert not [r for r in seen["records"] if r[0] in ("ERROR", "CRITICAL")], seen["records"]


@pytest.mark.parametrize(
    ("channel", "match"),
    [
        ("nocloud", "Name=e*"),
        ("config-drive", f"MACAddress={MAC}"),
        ("openstack-metadata", f"MACAddress={MAC}"),
        ("ec2-imds", f"MACAddress={MAC}"),
        ("opennebula", None),  # no network settings: cloud-init does DHCP on the first NIC
        ("ovf", None),
        ("gce-metadata", None),
    ],
)
def test_the_network_config_renders_dhcp_for_systemd_networkd(
    cloud_init: CloudInit, channel: str, match: str | None, tmp_path: Path
) -> None:
    seen = read_with_cloud_init(cloud_init, channel, mime_context(), tmp_path)

    if match is None:
        assert seen["networkd"] is None
        return
    [unit] = seen["networkd"].values()
    assert match in unit
    assert "DHCP=ipv4" in unit
    assert "Address=" not in unit.replace("MACAddress=", "")  # no static address


def test_cloud_init_consumes_the_composed_user_data_with_only_a_warning(
    cloud_init: CloudInit, tmp_path: Path
) -> None:
    context = mime_context()
    iso = ctx.build_medium("nocloud", context, tmp_path / "media")
    extract_iso(iso, tmp_path / "cloud/seed/nocloud")
    dmi = write_dmi(tmp_path, guest_smbios("nocloud"))

    seen = run_probe(cloud_init, tmp_path, mode="consume_user_data", dmi=str(dmi))

    assert seen["instance_id"] == context.instance_id
    assert "touch" in seen["cloud_config"]
    assert "/etc/ucvm-motd" in seen["cloud_config"]
    assert seen["records"] == [
        [
            "WARNING",
            "Unhandled unknown content-type (text/ucernvm) userdata: 'b'[ucernvm-begin]'...'",
        ],
    ]


# --- ds-identify: which datasource the guest gets ---------------------------------------


def ds_identify(
    cloud_init: CloudInit, root: Path, smbios: dict[str, str], iso: Path | None
) -> list[str] | None:
    """Run cloud-init's ds-identify for a KVM guest with this SMBIOS and this ISO as its
    CD-ROM; return the datasources it enables (None: cloud-init disabled)."""
    write_dmi(root, smbios)
    devices = "DEVNAME=/dev/vda1\nLABEL=rootfs\nTYPE=ext4"
    if iso:
        blkid = subprocess.run(
            # -c /dev/null: no cache, as ds-identify runs it (a cache would keep our ISO files)
            ["blkid", "-c", "/dev/null", "-o", "export", str(iso)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        devices += "\n" + blkid.replace(f"DEVNAME={iso}", "DEVNAME=/dev/sr0").strip()
    script = 'DI_MAIN=noop; . "$1"; DI_VIRT=kvm; DI_BLKID_EXPORT_OUT=$2; main --force'
    env = {"PATH": os.environ["PATH"], "PATH_ROOT": str(root), "DI_LOG": str(root / "di.log")}
    result = subprocess.run(
        ["sh", "-c", script, "ds-identify", str(cloud_init.ds_identify), devices],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    first_line = (root / "run/cloud-init/cloud.cfg").read_text().splitlines()[0]
    listed = first_line.split("[", 1)[1].split("]", 1)[0]
    return [name.strip() for name in listed.split(",") if name.strip() != "None"]


@pytest.mark.parametrize("channel", ctx.CHANNELS)
def test_ds_identify_enables_the_channels_datasource(
    cloud_init: CloudInit, channel: str, tmp_path: Path
) -> None:
    iso = None
    if ctx.channel_info(channel).kind == "medium":
        iso = ctx.build_medium(channel, mime_context(), tmp_path / "media", mac=MAC)

    enabled = ds_identify(cloud_init, tmp_path / "guest", guest_smbios(channel), iso)

    assert enabled == [DATASOURCES[channel]]


def test_ds_identify_prefers_the_config_drive_and_disables_cloud_init_without_a_channel(
    cloud_init: CloudInit, tmp_path: Path
) -> None:
    iso = ctx.build_medium("config-drive", mime_context(), tmp_path / "media")
    openstack = guest_smbios("openstack-metadata")

    assert ds_identify(cloud_init, tmp_path / "a", openstack, iso) == ["ConfigDrive"]
    assert ds_identify(cloud_init, tmp_path / "b", guest_smbios("nocloud"), None) is None


# --- media -------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [c for c in ctx.CHANNELS if c in SEED_DIRS])
def test_the_volume_id_is_where_the_boot_loader_reads_it(channel: str, tmp_path: Path) -> None:
    iso = ctx.build_medium(channel, mime_context(), tmp_path)

    raw = iso.read_bytes()[32808 : 32808 + 32]
    expected = {
        "nocloud": "cidata",
        "config-drive": "config-2",
        "opennebula": "CONTEXT",
        "ovf": "OVF-TRANSPORT",
    }[channel]
    assert raw == expected.encode().ljust(32)
    assert ctx.read_volume_id(iso) == expected


def test_equal_input_gives_equal_iso_bytes(tmp_path: Path) -> None:
    first = ctx.build_medium("config-drive", mime_context(), tmp_path / "a", mac=MAC)
    time.sleep(1.1)  # a later second must not change a date inside
    second = ctx.build_medium("config-drive", mime_context(), tmp_path / "b", mac=MAC)

    assert first.read_bytes() == second.read_bytes()


def test_config_drive_holds_the_dated_versions_cloud_init_asks_for() -> None:
    files = ctx.medium_files("config-drive", mime_context(), mac=MAC)

    assert "openstack/2018-08-27/network_data.json" in files  # the newest 22.4 knows
    assert "openstack/latest/user_data" in files
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert meta["uuid"] == "i-0ucvm0123456789ab"
    assert "openstack/latest/network_data.json" not in ctx.medium_files(
        "config-drive", mime_context()
    )  # no MAC: no link cloud-init could match, so none at all (DHCP on the first NIC)


def test_opennebula_context_is_shell_the_boot_loader_can_read(tmp_path: Path) -> None:
    context = Context("17", "one-vm", b"it's\nuser-data", ("ssh-ed25519 AAAA a'b",))
    script = ctx.medium_files("opennebula", context, mac=MAC)["context.sh"].decode()
    (tmp_path / "context.sh").write_text(script)

    shown = subprocess.run(
        [
            *(["busybox", "sh"] if shutil.which("busybox") else ["sh"]),
            "-c",
            '. ./context.sh; printf %s "$SSH_PUBLIC_KEY|$SET_HOSTNAME|$USER_DATA|$ETH0_MAC"',
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    user_data = base64.b64encode(context.user_data).decode()
    assert shown == f"ssh-ed25519 AAAA a'b|one-vm|{user_data}|{MAC}"
    assert "ETH0_IP" not in script  # cloud-init would make it a static address


def test_unknown_and_mismatched_channels_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="known: nocloud, config-drive"):
        ctx.build_medium("floppy", mime_context(), tmp_path)
    with pytest.raises(ContextError, match="metadata service, not a medium"):
        ctx.build_medium("ec2-imds", mime_context(), tmp_path)
    with pytest.raises(ContextError, match="a medium, not a metadata service"):
        MetadataService("nocloud", mime_context(), mac=MAC)
    with pytest.raises(ContextError, match="not six colon-separated hex bytes"):
        ctx.build_medium("nocloud", mime_context(), tmp_path, mac="52-54-00")


def test_channels_name_their_kind_and_platform() -> None:
    kinds = {name: ctx.channel_info(name).kind for name in ctx.CHANNELS}

    assert kinds == {
        "nocloud": "medium",
        "config-drive": "medium",
        "opennebula": "medium",
        "ovf": "medium",
        "openstack-metadata": "service",
        "ec2-imds": "service",
        "gce-metadata": "service",
    }
    assert ctx.channel_info("ec2-imds").platform in ctx.USER_DATA_LIMITS
    assert set(ctx.SMBIOS_IDENTITY) == {n for n, kind in kinds.items() if kind == "service"}


def test_ec2_needs_a_domain_uuid_starting_with_ec2() -> None:
    with pytest.raises(ContextError, match="ec2_domain_uuid"):
        ctx.smbios_sysinfo("ec2-imds", "4b1c2e0a-7d3f-4e59-9a61-0c5d8e2f1a3b")
    fields = ctx.smbios_sysinfo("ec2-imds", "EC21C2E0-7D3F-4E59-9A61-0C5D8E2F1A3B")
    assert (
        fields["system.uuid"] == fields["system.serial"] == "ec21c2e0-7d3f-4e59-9a61-0c5d8e2f1a3b"
    )


# --- user-data size ------------------------------------------------------------------------


def test_ec2_refuses_user_data_over_16_kib() -> None:
    ctx.check_user_data_size("Amazon EC2", b"x" * 16384)
    with pytest.raises(ContextError, match="16 KiB"):
        ctx.check_user_data_size("Amazon EC2", b"x" * 16385)
    with pytest.raises(ContextError, match="ec2-imds user-data"):
        MetadataService("ec2-imds", Context("i-1", "h", b"x" * 16385), mac=MAC)


def test_openstack_counts_its_limit_on_the_base64_text() -> None:
    ctx.check_user_data_size("OpenStack", b"x" * 49149)  # 65,532 characters of base64
    with pytest.raises(ContextError, match=r"49,150 bytes \(65,536 as its base64\)"):
        ctx.check_user_data_size("OpenStack", b"x" * 49150)


def test_gce_counts_binary_user_data_as_the_base64_it_is_stored_as() -> None:
    ctx.check_user_data_size("Google Compute Engine", b"x" * 262144)
    with pytest.raises(ContextError, match="as its metadata value"):
        ctx.check_user_data_size("Google Compute Engine", b"\xff" * 200000)


# --- services ------------------------------------------------------------------------------


def request(service: MetadataService, method: str, path: str, **headers: str):
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    try:
        connection.request(
            method, path, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


TTL = "X_aws_ec2_metadata_token_ttl_seconds"


def imds_token(service: MetadataService, ttl: str = "60") -> str:
    status, _, body = request(service, "PUT", "/latest/api/token", **{TTL: ttl})
    assert status == 200
    return body.decode()


def test_imds_v2_token_rules() -> None:
    with MetadataService("ec2-imds", mime_context(), mac=MAC) as imds:
        token = imds_token(imds)
        path = "/latest/meta-data/instance-id"

        assert request(imds, "GET", path)[0] == 401
        assert request(imds, "GET", path, X_aws_ec2_metadata_token="forged")[0] == 401
        assert (
            request(imds, "GET", path, X_aws_ec2_metadata_token=token)[2] == b"i-0ucvm0123456789ab"
        )
        assert request(imds, "GET", "/latest/api/token")[0] == 405
        assert request(imds, "PUT", "/latest/api/token")[0] == 400
        assert request(imds, "PUT", "/latest/api/token", **{TTL: "21601"})[0] == 400
        short = imds_token(imds, ttl="1")
        time.sleep(1.05)
        assert request(imds, "GET", path, X_aws_ec2_metadata_token=short)[0] == 401
        assert imds.requests[:2] == [("PUT", "/latest/api/token", 200), ("GET", path, 401)]


def test_imds_serves_the_crawlable_tree_and_404s_missing_user_data() -> None:
    context = Context("i-0abc", "node-1", b"", KEYS)
    with MetadataService("ec2-imds", context, mac=MAC) as imds:
        token = imds_token(imds)

        def get(path: str) -> tuple[int, bytes]:
            status, _, body = request(imds, "GET", path, X_aws_ec2_metadata_token=token)
            return status, body

        assert get("/2021-03-23/user-data")[0] == 404
        listing = get("/2021-03-23/meta-data/")[1].decode().splitlines()
        assert {"placement/", "public-keys/", "network/", "instance-id"} <= set(listing)
        assert get("/latest/meta-data/public-keys/")[1] == b"0=ops@lab\n1=backup"
        assert get("/latest/meta-data/public-keys/1/openssh-key")[1] == KEYS[1].encode()
        assert get(f"/2018-09-24/meta-data/network/interfaces/macs/{MAC}/mac")[1] == MAC.encode()
        assert get("/2016-09-02/meta-data/placement/region")[1] == b"us-east-1"
        document = json.loads(get("/latest/dynamic/instance-identity/document")[1])
        assert document["instanceId"] == "i-0abc"
        assert get("/2099-01-01/meta-data/")[0] == 404


def test_gce_answers_only_with_the_metadata_flavor_header() -> None:
    with MetadataService("gce-metadata", mime_context(), mac=MAC) as gce:
        path = "/computeMetadata/v1/instance/hostname"
        status, headers, _ = request(gce, "GET", path)
        assert (status, headers["Metadata-Flavor"]) == (403, "Google")
        assert request(gce, "GET", path, Metadata_Flavor="google")[0] == 403

        status, headers, body = request(gce, "GET", path, Metadata_Flavor="Google")
        assert (status, headers["Metadata-Flavor"]) == (200, "Google")
        assert body == b"ucvm-ctx.europe-west1-b.c.ucvm-lab.internal"
        attributes = "/computeMetadata/v1/instance/attributes/"
        assert request(gce, "GET", attributes, Metadata_Flavor="Google")[2] == (
            b"ssh-keys\nuser-data\n"
        )
        recursive = request(gce, "GET", attributes + "?recursive=true", Metadata_Flavor="Google")
        keys = json.loads(recursive[2])["ssh-keys"].splitlines()
        assert keys == [f"cloudinit:{key}" for key in KEYS]
        as_text = request(
            gce,
            "GET",
            "/computeMetadata/v1/project/?recursive=true&alt=text",
            Metadata_Flavor="Google",
        )[2]
        assert b"project-id ucvm-lab" in as_text.splitlines()


def test_a_slow_service_answers_after_delay_s() -> None:
    with MetadataService("openstack-metadata", mime_context(), mac=MAC, delay_s=0.4) as slow:
        started = time.monotonic()
        status, _, body = request(slow, "GET", "/openstack")

        assert status == 200
        assert time.monotonic() - started >= 0.4
        assert b"2018-08-27" in body.splitlines()


def test_stop_makes_the_service_down_and_drops_waiting_requests() -> None:
    with MetadataService("openstack-metadata", mime_context(), mac=MAC, delay_s=30) as service:
        answers: list[object] = []

        def waiting_client() -> None:
            try:
                answers.append(request(service, "GET", "/openstack/latest/user_data"))
            except (OSError, http.client.HTTPException) as error:
                answers.append(error)

        client = threading.Thread(target=waiting_client)
        client.start()
        time.sleep(0.2)
        started = time.monotonic()
        service.stop()
        client.join(timeout=5)

        assert time.monotonic() - started < 5  # stop() does not wait the delay out
        assert isinstance(answers[0], (OSError, http.client.HTTPException))
        with pytest.raises(ConnectionRefusedError):
            request(service, "GET", "/openstack")


def test_openstack_user_data_is_404_when_there_is_none() -> None:
    with MetadataService("openstack-metadata", Context("u-1", "h", b""), mac=MAC) as service:
        assert request(service, "GET", "/openstack/latest/user_data")[0] == 404
        assert request(service, "GET", "/openstack/latest/meta_data.json")[0] == 200
        assert request(service, "GET", "/latest/meta-data/instance-id")[2] == b"u-1"
        assert ("GET", "/latest/meta-data/instance-id", 200) in service.requests


def test_no_thread_is_left_after_the_with_block() -> None:
    before = set(threading.enumerate())
    for channel in ("ec2-imds", "gce-metadata", "openstack-metadata"):
        with MetadataService(channel, mime_context(), mac=MAC, delay_s=0.05) as service:
            request(service, "GET", "/")
    assert set(threading.enumerate()) == before


# --- μCernVM's block -----------------------------------------------------------------------


def test_the_block_is_found_in_plain_text() -> None:
    text = (
        b"#!/bin/sh\necho hi\n"
        b"[ucernvm-begin]\ncvmfs_tag=1.2\n# a comment\n\nresize_rootfs=on\n[ucernvm-end]\n"
    )
    block = ctx.parse_ucernvm_block(text, "user-data")

    assert block.found
    assert block.values == {"cvmfs_tag": "1.2", "resize_rootfs": "on"}
    assert block.problems == ()


def test_the_block_is_found_in_the_text_ucernvm_part_of_composed_user_data() -> None:
    user_data = ctx.compose_user_data(CLOUD_CONFIG, UCERNVM)

    assert ctx.parse_ucernvm_block(user_data, "user-data").values == UCERNVM
    assert b"\n[ucernvm-begin]\ncvmfs_server=169.254.169.101\n" in user_data  # 7bit: raw
    assert user_data == ctx.compose_user_data(CLOUD_CONFIG, UCERNVM)
    parts = [p.get_content_type() for p in email.message_from_bytes(user_data).walk()]
    assert parts == ["multipart/mixed", "text/cloud-config", "text/ucernvm"]


def test_each_problem_names_source_line_and_fix() -> None:
    text = (
        b"[ucernvm-begin]\n"
        b"cvmfs_srever=example.org\n"
        b"resize_rootfs=yes\n"
        b"just words\n"
        b"cvmfs_tag = 1.2\n"
        b"cvmfs_server=http://169.254.169.101:8080/ucvm\n"
        b"[ucernvm-end]\n"
    )
    block = ctx.parse_ucernvm_block(text, "seed/user-data")

    assert block.values == {"cvmfs_server": "http://169.254.169.101:8080/ucvm"}
    assert [(p.line, p.source) for p in block.problems] == [
        (2, "seed/user-data"),
        (3, "seed/user-data"),
        (4, "seed/user-data"),
        (5, "seed/user-data"),
    ]
    unknown, bad_value, no_equals, blanks = (str(p) for p in block.problems)
    assert "unknown key 'cvmfs_srever'" in unknown and "did you mean cvmfs_server?" in unknown
    assert "resize_rootfs='yes' is not valid" in bad_value and "on or off" in bad_value
    assert "is not key=value" in no_equals
    assert "unknown key 'cvmfs_tag '" in blanks  # the boot loader does not trim either


def test_a_block_without_its_end_is_ignored_whole() -> None:
    block = ctx.parse_ucernvm_block(b"[ucernvm-begin]\ncvmfs_tag=1.2\n", "seed/user-data")

    assert block.values == {} and block.found
    [problem] = block.problems
    assert str(problem).startswith("seed/user-data, line 1: [ucernvm-begin] without [ucernvm-end]")
    assert "add a line [ucernvm-end]" in str(problem)


def test_gzip_is_decompressed_to_1_mib_at_most() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KiB
    [problem] = ctx.parse_ucernvm_block(bomb, "user-data").problems

    assert (problem.step, problem.line) == ("user-data", 0)
    assert "more than 1,048,576 bytes" in str(problem)
    with pytest.raises(zlib.error, match="more than 1,024 bytes"):
        userdata.gunzip_bounded(bomb, 1024)
    two_members = gzip.compress(b"a" * 10) + gzip.compress(b"b" * 10)
    assert userdata.gunzip_bounded(two_members, 20) == b"a" * 10 + b"b" * 10
    with pytest.raises(zlib.error, match="cut short"):
        userdata.gunzip_bounded(gzip.compress(b"a" * 1000)[:-9], 2000)


def test_deep_mime_nesting_is_one_pass_not_a_recursion() -> None:
    message = b"Content-Type: text/ucernvm\n\n[ucernvm-begin]\ncvmfs_tag=1.1\n[ucernvm-end]\n"
    for level in range(10000):  # old: RecursionError in email.message.walk()
        message = (
            f"Content-Type: multipart/mixed; boundary=n{level}\n\n--n{level}\n".encode()
            + message
            + f"\n--n{level}--\n".encode()
        )
    block = ctx.parse_ucernvm_block(b"MIME-Version: 1.0\n" + message, "user-data")

    [problem] = block.problems
    assert block.values == {} and "first text/ucernvm part only" in problem.what


def test_a_base64_part_that_is_not_base64_is_a_problem() -> None:
    message = (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: text/ucernvm\nContent-Transfer-Encoding: base64\n\n"
        b"W3VjZXJudm0tYmVnaW5d!!not*base64\n--b--\n"
    )
    [problem] = ctx.parse_ucernvm_block(message, "user-data").problems

    assert problem.source == "user-data, MIME part 1 (text/ucernvm)"
    assert "not base64" in problem.what and "base64 -w 76" in problem.fix


def test_a_good_base64_part_and_gzip_user_data_are_read() -> None:
    encoded = base64.b64encode(b"[ucernvm-begin]\ncvmfs_branch=devel\n[ucernvm-end]\n")
    message = (
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: text/ucernvm\nContent-Transfer-Encoding: base64\n\n"
        + encoded
        + b"\n--b--\n"
    )
    assert ctx.parse_ucernvm_block(message, "u").values == {"cvmfs_branch": "devel"}
    assert ctx.parse_ucernvm_block(gzip.compress(message), "u").values == {"cvmfs_branch": "devel"}
    assert not ctx.parse_ucernvm_block(b"#cloud-config\n", "u").found


def test_compose_refuses_a_bad_block() -> None:
    with pytest.raises(ContextError, match="resize_rootfs"):
        ctx.compose_user_data(CLOUD_CONFIG, {"resize_rootfs": "maybe"})
    with pytest.raises(ContextError, match="unknown key 'cvmfs_proxy'"):
        ctx.compose_user_data(CLOUD_CONFIG, {"cvmfs_proxy": "http://squid:3128"})
