"""Contextualization: one cell per (target, channel). The one boot loader image boots with a
user-data on the platform's channel; each effect is then checked inside the guest.

The boot loader's part, from its console lines: the channel found, the hostname, the network
settings, and the [ucernvm-begin] keys (the OS version, the repository server, scratch sizing).
The OS's part, done by real cloud-init (Debian's) from the same channel, checked by logging in
over SSH as the user it created with the key it installed: the hostname, the file it wrote,
the command it ran, and cloud-init's own verdict. The version is chosen by the user-data's
cvmfs_tag alone (no boot option), and the server by its cvmfs_server, a second guest address
of the run's repository that only the user-data names.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import allure
import pytest

from lab import matrix
from lab.build import context as ctx
from lab.build.bootloader import GUEST_REPO_ADDRESS, BootLoader
from lab.build.osrepo.manifest import Snapshot
from lab.evidence import context_labels
from lab.observe import BootRecord, observe_boot
from lab.services.repo import RepoServer
from lab.targets.base import Instance, Target

pytestmark = [pytest.mark.boot, pytest.mark.check("context")]

USER = "ucvm-tester"
CHECK_FILE = "/etc/ucvm-lab/context-check"
COMMAND_FILE = "/var/lib/ucvm-lab-runcmd"
# Only the user-data names CONTEXT_REPO_ADDRESS: a repo marker showing it proves cvmfs_server
# applied (lab.build.context, which `ucvm-lab up` forwards too).
CONTEXT_REPO_ADDRESS = ctx.CONTEXT_REPO_ADDRESS
SCRATCH_MIN_MB = 256  # the boot loader's default minimum: resize_rootfs=off makes exactly that


@dataclass
class Effects:
    """Which steps took effect inside the guest: step -> (took effect, evidence)."""

    steps: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def record(self, step: str, ok: bool, evidence: str) -> None:
        self.steps[step] = (ok, evidence)

    @property
    def missing(self) -> list[str]:
        return [step for step, (ok, _) in self.steps.items() if not ok]

    def as_json(self) -> str:
        return json.dumps(
            {step: {"took_effect": ok, "evidence": why} for step, (ok, why) in self.steps.items()},
            indent=2,
        )


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh key pair for the user cloud-init creates: (private key file, public key line)."""
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ucvm-lab", "-f", str(key)],
        check=True,
    )
    return key, key.with_suffix(".pub").read_text().strip()


def user_data(tag: str, nonces: dict[str, str], public_key: str) -> bytes:
    cloud_config = f"""#cloud-config
users:
  - name: {USER}
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    ssh_authorized_keys:
      - {public_key}
write_files:
  - path: {CHECK_FILE}
    content: "{nonces["write_files"]}\\n"
runcmd:
  - [sh, -c, "echo {nonces["runcmd"]} > {COMMAND_FILE}"]
"""
    ucernvm = {
        "cvmfs_tag": tag,
        "cvmfs_server": CONTEXT_REPO_ADDRESS.removesuffix(":80"),
        "resize_rootfs": "off",
    }
    return ctx.compose_user_data(cloud_config, ucernvm)


def loader_effects(record: BootRecord, effects: Effects, channel: str, hostname: str,
                   snapshot: Snapshot) -> None:  # fmt: skip
    found = record.context_step("channel")
    effects.record(
        "channel",
        bool(found and found.status == "found" and found.fields.get("channel") == channel),
        f"{found.status} {found.fields}" if found else "no context lines on the console",
    )
    step = record.context_step("hostname")
    effects.record(
        "loader_hostname",
        bool(step and step.status == "applied" and step.fields.get("value") == hostname),
        f"{step.status} {step.fields}" if step else "no hostname step",
    )
    step = record.context_step("network")
    effects.record(
        "network", bool(step and step.status == "applied"), str(step) if step else "no step"
    )
    repo = record.phase("repo")
    effects.record(
        "cvmfs_tag",
        bool(repo and repo.fields.get("tag") == snapshot.tag and record.os_version == snapshot.tag
             and repo.fields.get("source") == "user-data"),
        f"repo {repo.fields if repo else '-'}; booted {record.os_version}",
    )  # fmt: skip
    server = f"http://{CONTEXT_REPO_ADDRESS.removesuffix(':80')}/"
    effects.record(
        "cvmfs_server",
        bool(repo and repo.fields.get("server") == server),
        f"repo server {repo.fields.get('server') if repo else '-'}, asked {server}",
    )
    scratch = record.phase("scratch")
    size = int(scratch.fields.get("size_mb", 0)) if scratch else 0
    effects.record(
        "resize_rootfs",
        0 < size <= SCRATCH_MIN_MB,
        f"scratch {size} MB (off: the minimum, {SCRATCH_MIN_MB} MB; on: the whole free disk)",
    )
    step = record.context_step("user-data")
    effects.record(
        "user_data_handed_on",
        bool(step and step.status == "handed-on"),
        f"{step.status} {step.fields}" if step else "no user-data step",
    )


def os_effects(
    instance: Instance,
    record: BootRecord,
    effects: Effects,
    key: Path,
    hostname: str,
    nonces: dict[str, str],
) -> None:
    """cloud-init's part, each effect by its own command as the user it created."""
    state = record.ready_field("cloud_init")
    detail = instance.run("cat /run/cloud-init/result.json 2>&1", timeout=30).output.strip()
    effects.record("cloud_init", state == "done", f"cloud_init={state}; result.json: {detail}")

    def as_user(command: str) -> tuple[bool, str]:
        result = instance.ssh(USER, key, command)
        return result.ok, result.output.strip()

    ok, out = as_user("id -un")
    effects.record("user_and_ssh_key", ok and out == USER, f"ssh {USER}@ with the key: {out}")
    ok, out = as_user("sudo -n cat /var/lib/cloud/data/set-hostname")  # cloud-init's own record
    effects.record("sudo", ok, f"sudo -n as {USER}: {'allowed' if ok else out}")
    set_by_cloud_init = ok and json.loads(out or "{}").get("hostname") == hostname
    ok, out = as_user("hostname")
    evidence = f"hostname {out}; cloud-init's set-hostname record names it: {set_by_cloud_init}"
    effects.record("os_hostname", set_by_cloud_init and out == hostname, evidence)
    for step, path in (("write_files", CHECK_FILE), ("runcmd", COMMAND_FILE)):
        ok, out = as_user(f"cat {path}")
        effects.record(step, ok and out == nonces[step], f"{path}: {out}")


def test_contextualizes_on_channel(
    cell: matrix.Cell,
    channel: str,
    target: Target,
    boot_loader: BootLoader,
    repo_server: RepoServer,
    expected_snapshot: Snapshot,
    lab_matrix: matrix.Matrix,
    ssh_key: tuple[Path, str],
    attach_boot,
) -> None:
    offered, why = target.offers_channel(channel)
    if not offered:
        pytest.skip(f"{cell.target.name} · {channel}: {why}")
    key, public_key = ssh_key
    nonces = {step: secrets.token_hex(8) for step in ("write_files", "runcmd")}
    hostname = f"ucvm-{channel}"
    context = ctx.Context(
        instance_id=f"i-{secrets.token_hex(8)}",
        hostname=hostname,
        user_data=user_data(expected_snapshot.tag, nonces, public_key),
        ssh_public_keys=(public_key,),
    )
    allure.attach(context.user_data, "user-data", allure.attachment_type.TEXT)
    image_format = target.format_for()
    effects, record = Effects(), None
    with target.launch(
        boot_loader,
        context,
        channel=channel,
        image_format=image_format,
        host_services={GUEST_REPO_ADDRESS: repo_server.port,
                       CONTEXT_REPO_ADDRESS: repo_server.port},
    ) as instance:  # fmt: skip
        try:
            budget = lab_matrix.checks["context"].boot_budget_s or lab_matrix.settings.boot_budget_s
            record = observe_boot(instance, budget)
            loader_effects(record, effects, channel, hostname, expected_snapshot)
            if record.ready:
                os_effects(instance, record, effects, key, hostname, nonces)
        finally:
            attach_boot(record, instance.console(), image_format)
            allure.attach(effects.as_json(), "context-effects.json", allure.attachment_type.JSON)
            took = [step for step, (ok, _) in effects.steps.items() if ok]
            labels = context_labels(took_effect=took, missing=effects.missing)
            for name, value in labels.items():
                allure.dynamic.label(name, value)

    assert record.ready, record.summary()
    assert not effects.missing, "did not take effect: " + "; ".join(
        f"{step} ({effects.steps[step][1]})" for step in effects.missing
    )
