"""The rebase cell's package and account conflicts: what it does on FROM, and the verdicts of
rules R8 (a local account's id moved), R10 (a local package kept), R11 (a local package the new
release ships, replaced by the release's) and R12 (dpkg's database consistent), read inside the
guest through the command channel and, for `apt-get check`, on the host.

The fixture .debs are lab.build.fixture_debs'; which release ships which is releases.yaml's
`fixture_debs` (lab.build.releases). A verdict is None when the rule holds, else what was found
instead; a rule that cannot be checked (a command fails, a file is missing) fails with that.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import shlex
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lab import proc
from lab.build import fixture_debs
from lab.build.fixture_debs import Account, FixtureDeb
from lab.build.releases import load_release_set
from lab.targets.base import CommandResult, Instance

LOCAL_USER = "alice"  # made by the cell (test_rebase.LOCAL_CHANGES) with useradd
LOCAL_PACKAGES = ("ucvm-fixture-local=1.0", "ucvm-fixture-svc=1.0")  # dpkg -i'd on FROM
CHUNK = 3000  # base64 characters per instance.run (the channel reads one line per command)
STAGE = "/run/ucvm-fixture-debs"  # a tmpfs: nothing of it lands in the writable layer
SCRATCH = "/.ucvm/scratch/ucvm"
IDMAP = f"{SCRATCH}/idmap"
REBASE_LOGS = f"{SCRATCH}/rebase-*.log"
STATUS = "/var/lib/dpkg/status"
Verdict = str | None


def run(instance: Instance, command: str, timeout: float = 180) -> CommandResult:
    return instance.run(command, timeout=timeout)


# --------------------------------------------------------------------------- releases


@cache
def shipped(tag: str) -> tuple[FixtureDeb, ...]:
    """The fixture .debs the release ``tag`` ships (releases.yaml)."""
    releases = {r.tag: r for r in load_release_set().releases}
    return tuple(fixture_debs.fixture(key) for key in releases[tag].fixture_debs)


def shipped_accounts(tag: str) -> list[Account]:
    return [account for deb in shipped(tag) for account in deb.accounts]


# --------------------------------------------------------------------------- files both ways


def push_file(instance: Instance, data: bytes, dest: str) -> None:
    """``data`` written to ``dest`` in the guest, in base64 chunks; checked by its SHA-256."""
    encoded = base64.b64encode(data).decode()
    staged = shlex.quote(f"{dest}.b64")
    first = run(instance, f"mkdir -p {shlex.quote(str(Path(dest).parent))} && : >{staged}")
    assert first.ok, f"cannot stage {dest}: {first.output}"
    for at in range(0, len(encoded), CHUNK):
        chunk = run(instance, f"printf %s {encoded[at : at + CHUNK]} >>{staged}")
        assert chunk.ok, f"{dest}: chunk at {at} failed: {chunk.output}"
    target = shlex.quote(dest)
    done = run(instance, f"base64 -d {staged} >{target} && rm {staged} && sha256sum {target}")
    expected = hashlib.sha256(data).hexdigest()
    assert done.ok and done.output.split()[:1] == [expected], (
        f"{dest} arrived as {done.output.strip()!r}; expected SHA-256 {expected}"
    )


def fetch_file(instance: Instance, path: str) -> bytes | None:
    """The guest's file (gzip, then base64, through the channel), or None if it is not there."""
    quoted = shlex.quote(path)
    result = run(instance, f"[ -r {quoted} ] && gzip -c {quoted} | base64 -w 0")
    if not result.ok:
        return None
    return gzip.decompress(base64.b64decode(result.output.strip()))


# --------------------------------------------------------------------------- on FROM


@dataclass(frozen=True)
class LocalState:
    """What the cell made on FROM, for the rules after the update."""

    packages: tuple[FixtureDeb, ...]  # installed locally with dpkg -i
    uid: int  # LOCAL_USER's ids on FROM
    gid: int
    status: bytes  # FROM's dpkg status after the local installs


def local_packages(source_tag: str) -> tuple[FixtureDeb, ...]:
    """LOCAL_PACKAGES but those FROM ships itself (a FROM that ships ucvm-fixture-svc has it)."""
    ships = {deb.name for deb in shipped(source_tag)}
    wanted = (fixture_debs.fixture(key) for key in LOCAL_PACKAGES)
    return tuple(deb for deb in wanted if deb.name not in ships)


def install_local_packages(instance: Instance, source_tag: str) -> tuple[FixtureDeb, ...]:
    """The local packages copied in and installed by `dpkg -i`, as a user would."""
    debs = local_packages(source_tag)
    paths = []
    for deb in debs:
        paths.append(f"{STAGE}/{deb.filename}")
        push_file(instance, fixture_debs.fixture_deb(deb.key).read_bytes(), paths[-1])
    result = run(instance, f"dpkg -i {' '.join(paths)} && rm -rf {STAGE}", timeout=300)
    assert result.ok, f"dpkg -i {' '.join(d.key for d in debs)} failed: {result.output}"
    return debs


def user_ids(instance: Instance) -> tuple[int, int] | str:
    """LOCAL_USER's uid and gid, or what the guest said instead."""
    ids = run(instance, f"id -u {LOCAL_USER} && id -g {LOCAL_USER}")
    words = ids.output.split()
    if not ids.ok or len(words) != 2 or not all(word.isdigit() for word in words):
        return f"no local user {LOCAL_USER}: {ids.output.strip()!r}"
    return int(words[0]), int(words[1])


def record_local_state(instance: Instance, packages: tuple[FixtureDeb, ...]) -> LocalState:
    ids = user_ids(instance)
    assert not isinstance(ids, str), ids
    uid, gid = ids
    status = fetch_file(instance, STATUS)
    assert status is not None, f"cannot read {STATUS} on FROM"
    return LocalState(packages, uid, gid, status)


# --------------------------------------------------------------------------- R8: accounts


def collisions(state: LocalState, dest_tag: str) -> list[tuple[str, int, Account]]:
    """(uid|gid, the local id, the new release's account) for each id the release takes."""
    found = []
    for account in shipped_accounts(dest_tag):
        found += [("uid", state.uid, account)] if account.uid == state.uid else []
        found += [("gid", state.gid, account)] if account.uid == state.gid else []
    return found


def idmap_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


def accounts_verdict(instance: Instance, state: LocalState, source: str, dest: str) -> Verdict:
    """The local user's ids that the release took moved to free ones; her files chowned to
    them; each move in the idmap (`uid|gid OLD NEW NAME FROM TO`); upstream's homes its own."""
    now = user_ids(instance)
    if isinstance(now, str):
        return now
    ids = {"uid": now[0], "gid": now[1]}
    idmap = run(instance, f"cat {IDMAP}")
    problems = []
    for kind, old, account in collisions(state, dest):
        database = "passwd" if kind == "uid" else "group"
        holder = run(instance, f"getent {database} {old} | cut -d: -f1").output.strip()
        if ids[kind] == old or holder != account.name:
            problems.append(f"{kind} {old}: {LOCAL_USER} has {ids[kind]}, {old} is {holder!r}")
        wanted = [kind, str(old), str(ids[kind]), LOCAL_USER, source, dest]
        if not idmap.ok or wanted not in idmap_lines(idmap.output):
            problems.append(f"{IDMAP} lacks `{' '.join(wanted)}`: {idmap.output.strip()!r}")
    files = f"/home/{LOCAL_USER} /home/{LOCAL_USER}/notes /var/lib/{LOCAL_USER}-data/db"
    owners = run(instance, f"stat -c '%U:%G %u:%g %n' {files}")
    expected = f"{LOCAL_USER}:{LOCAL_USER} {ids['uid']}:{ids['gid']}"
    if not owners.ok or owners.output.count(expected) != len(files.split()):
        problems.append(f"her files, expected {expected}: {owners.output.strip()}")
    for account in shipped_accounts(dest):
        home = run(instance, f"stat -c %U:%G {account.home}").output.strip()
        if home != f"{account.name}:{account.name}":
            problems.append(f"{account.home} is {home!r}, not {account.name}'s (chowned?)")
    return "; ".join(problems) or None


# --------------------------------------------------------------------------- R10, R11: packages


def package_state(instance: Instance, name: str) -> str:
    """`VERSION STATUS` (e.g. `2.0 install ok installed`) of ``name``, or dpkg-query's word."""
    query = run(instance, f"dpkg-query -W -f '${{Version}} ${{Status}}' {name}")
    return query.output.strip()


def log_has(log: str, action: str, name: str) -> bool:
    return any(line.split("\t")[:2] == [action, name] for line in log.splitlines())


def kept_and_replaced(state: LocalState, dest_tag: str) -> tuple[list[FixtureDeb], list[str]]:
    """The local packages the new release does not ship (kept), and the names it does."""
    ships = {deb.name for deb in shipped(dest_tag)}
    kept = [deb for deb in state.packages if deb.name not in ships]
    return kept, [deb.name for deb in state.packages if deb.name in ships]


def kept_verdict(instance: Instance, deb: FixtureDeb, log: str) -> Verdict:
    """``deb`` installed, `dpkg -V` clean, each of its files as it shipped, pkg-keep logged."""
    problems = []
    if (found := package_state(instance, deb.name)) != f"{deb.version} install ok installed":
        problems.append(f"dpkg-query: {found!r}")
    verify = run(instance, f"dpkg -V {deb.name}")
    if not verify.ok or verify.output.strip():
        problems.append(f"dpkg -V (exit {verify.exit_code}): {verify.output.strip()!r}")
    for entry in deb.files:
        content = run(instance, f"cat {entry.path}")
        if not content.ok or content.output != entry.content:
            problems.append(f"{entry.path}: {content.output[:200]!r}")
    if not log_has(log, "pkg-keep", deb.name):
        problems.append("no pkg-keep line in the rebase log")
    return "; ".join(problems) or None


def keys(debs: Iterable[FixtureDeb]) -> str:
    return ", ".join(deb.key for deb in debs)


def kept_packages_verdict(instance: Instance, kept: list[FixtureDeb], log: str) -> Verdict:
    if not kept:
        return "no local package left to keep: nothing to check"
    problems = [f"{deb.key}: {why}" for deb in kept if (why := kept_verdict(instance, deb, log))]
    return "; ".join(problems) or None


def replaced_packages_verdict(
    instance: Instance, names: list[str], dest_tag: str, log: str
) -> Verdict:
    problems = [
        f"{name}: {why}"
        for name in names
        if (why := replaced_verdict(instance, name, dest_tag, log))
    ]
    return "; ".join(problems) or None


def replaced_verdict(instance: Instance, name: str, dest_tag: str, log: str) -> Verdict:
    """The release's version installed and its files showing; pkg-replace logged."""
    (deb,) = (d for d in shipped(dest_tag) if d.name == name)
    problems = []
    if (found := package_state(instance, name)) != f"{deb.version} install ok installed":
        problems.append(f"dpkg-query: {found!r}, expected {deb.version} installed")
    for entry in deb.files:
        content = run(instance, f"cat {entry.path}")
        if not content.ok or content.output != entry.content:
            problems.append(f"{entry.path}: {content.output[:200]!r}, expected the release's")
    verify = run(instance, f"dpkg -V {name}")
    if not verify.ok or verify.output.strip():
        problems.append(f"dpkg -V (exit {verify.exit_code}): {verify.output.strip()!r}")
    if not log_has(log, "pkg-replace", name):
        problems.append("no pkg-replace line in the rebase log")
    return "; ".join(problems) or None


# --------------------------------------------------------------------------- R12: the database


def installed_versions(status: bytes) -> dict[str, str]:
    """Package -> version of each installed stanza of a dpkg status file."""
    found = {}
    for stanza in status.decode(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if fields.get("Status", "").endswith(" ok installed") and "Package" in fields:
            found[fields["Package"]] = fields.get("Version", "?")
    return found


def status_diff(before: bytes, after: bytes) -> str:
    """The installed packages of two status files, compared: `+ NAME V`, `- NAME V`,
    `~ NAME OLD -> NEW`, one a line."""
    old, new = installed_versions(before), installed_versions(after)
    lines = [f"+ {n} {new[n]}" for n in sorted(new.keys() - old.keys())]
    lines += [f"- {n} {old[n]}" for n in sorted(old.keys() - new.keys())]
    lines += [f"~ {n} {old[n]} -> {new[n]}" for n in sorted(old.keys() & new.keys())
              if old[n] != new[n]]  # fmt: skip
    return "\n".join(lines) + "\n"


def apt_get_check(status: bytes) -> Verdict:
    """`apt-get check` on the host over the guest's status (no release ships apt): no sources,
    empty lists, a cache of its own."""
    with tempfile.TemporaryDirectory(prefix="ucvm-apt-check-") as work:
        folder = Path(work)
        (folder / "status").write_bytes(status)
        (folder / "lists/partial").mkdir(parents=True)
        (folder / "cache").mkdir()
        options = {
            "Dir::State::status": folder / "status",
            "Dir::Etc::SourceList": "/dev/null",
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::State::Lists": folder / "lists",
            "Dir::State::extended_states": folder / "extended_states",
            "Dir::Cache": folder / "cache",
            "Debug::NoLocking": "true",
        }
        argv = ["apt-get", *(f"-o{key}={value}" for key, value in options.items()), "check"]
        try:
            done = proc.run(*argv, check=False)
        except proc.CommandError as error:
            return f"apt-get check could not run on the host: {error}"
    said = (done.stdout + done.stderr).strip()
    return None if done.returncode == 0 else f"apt-get check exit {done.returncode}: {said}"


def database_verdict(instance: Instance, status: bytes | None) -> Verdict:
    """`dpkg --audit` says nothing in the guest, and `apt-get check` passes on the host."""
    audit = run(instance, "dpkg --audit")
    problems = []
    if not audit.ok or audit.output.strip():
        problems.append(f"dpkg --audit (exit {audit.exit_code}): {audit.output.strip()!r}")
    if status is None:
        problems.append(f"cannot fetch {STATUS} for apt-get check")
    elif why := apt_get_check(status):
        problems.append(why)
    return "; ".join(problems) or None
