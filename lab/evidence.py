"""The evidence vocabulary: what a result says, written by the suites and read by the report.

Every cell test of suites/boot labels its allure result (``ucvm.check``, ``ucvm.platform``, ...,
see ``Label``); the support table and the release gate read those labels back as ``Result``s.
The two sides meet only in the allure-results files, so the contract between them (the label
names, the platforms in the table's order, the kinds of evidence, the console attachment's
name) is written here, once, and both sides name it through this module.

A foundation any layer may import: it imports nothing of the lab. The platforms are kept here
as data, each with its profile; lab/targets/profiles.py names each profile's platform, and
tests/test_evidence.py checks that the two agree both ways.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

# --- the platforms ------------------------------------------------------------------------------

PLATFORM_PROFILES: dict[str, str] = {
    "VirtualBox": "virtualbox",
    "VMware": "vmware",
    "KVM": "kvm",
    "Xen": "xen",
    "Microsoft Hyper-V": "hyperv",
    "Parallels": "parallels",
    "OpenStack": "openstack",
    "OpenNebula": "opennebula",
    "Amazon EC2": "ec2",
    "Google Compute Engine": "gce",
}
"""Each platform (a row of the support table, in the table's order) and its profile's name."""

PLATFORMS: tuple[str, ...] = tuple(PLATFORM_PROFILES)

# --- the kinds of evidence ----------------------------------------------------------------------

EVIDENCE_TITLES: dict[str, str] = {"profile": "profile run here", "real": "real platform"}
"""``profile``: booted here in QEMU on the platform's virtual hardware; ``real``: on the
platform itself. Each kind is a column of the support table, titled so."""

EVIDENCE: tuple[str, ...] = tuple(EVIDENCE_TITLES)

# --- the labels ---------------------------------------------------------------------------------

LABEL_PREFIX = "ucvm."
BOOT_CHECK, CONTEXT_CHECK, REBASE_CHECK = "boot", "context", "rebase"
"""Values of the ``check`` label the report treats specially (the context and rebase columns
of the boot table)."""
INFRASTRUCTURE_ERROR = "InfrastructureError"
"""The name of the exception (lab.targets.base) the lab raises when its own machinery failed a
cell; a broken result whose message starts with it is incomplete, not failed."""
SIDES = ("candidate", "baseline")
"""The two sides of a gate run (``ucvm-lab gate --candidate``): each cell runs for both."""
CONSOLE_ATTACHMENT = "console.log"
"""The name of the attachment holding the guest's console; the table links to it."""
BOOT_RECORD_ATTACHMENT = "boot-record.json"
"""The attachment holding a cell's boot record (lab.observe.BootRecord as JSON); its figures
(``Result.figures``) are what the history, the plots and the gate compare."""
READY_COUNTERS = ("cache_bytes", "fetched_bytes", "evicted_blocks", "units_failed")
"""The counters of the `ready` marker that become figures."""
CLOUD_INIT_COMPLAINTS = ("warning", "error", "critical")
"""The statuses of a ``context step=cloud-init`` line: what cloud-init logged at this boot."""
PHASE_FIGURE = "phase_s."
"""The prefix of a phase's figure: ``phase_s.repo`` is the guest seconds from the marker
before `repo` to `repo` (summed when a two-phase boot prints a phase twice)."""


class Label(StrEnum):
    """The name (after ``ucvm.``) of each label a cell test's allure result carries."""

    CHECK = "check"  # the matrix check: boot, reboot, image_size, context
    TARGET = "target"  # the matrix target's name
    PLATFORM = "platform"  # one of PLATFORMS
    VERSION = "version"  # the OS version asked for (newest, previous, a tag, ...)
    EVIDENCE = "evidence"  # one of EVIDENCE
    TIER = "tier"  # the target's tier, 1, 2 or 3
    CHANNEL = "channel"  # the contextualization channel (check ``context``)
    ACCEL = "accel"  # the accelerator that ran the guest (kvm, tcg)
    FAILED_PHASE = "failed_phase"  # the boot phase that failed
    TOOK_EFFECT = "context_took_effect"  # context steps that took effect, comma-separated
    MISSING = "context_missing"  # context steps that did not, comma-separated
    REBASE_FROM = "rebase_from"  # check ``rebase``: the pair's FROM, as matrix.yaml names it
    FAILED_RULES = "rebase_failed_rules"  # the rebase rules that failed (R1,R8), comma-separated
    RULE_FAILURES = "rebase_failures"  # what each failed rule found, a (clipped) line each
    SIDE = "side"  # a gate run: candidate or baseline
    ROUND = "round"  # a gate run: which of the side's boots of the cell (0, 1, ...)
    INCOMPLETE = "incomplete"  # the infrastructure failed (not the appliance): why

    @property
    def key(self) -> str:
        """The label's name on the wire: ``ucvm.`` and the name."""
        return LABEL_PREFIX + self.value


REQUIRED_LABELS: tuple[Label, ...] = (
    Label.CHECK,
    Label.TARGET,
    Label.PLATFORM,
    Label.VERSION,
    Label.EVIDENCE,
    Label.TIER,
)
"""Every result with a ``ucvm.check`` label must carry these."""


# --- writing labels (the suites) ----------------------------------------------------------------


def cell_labels(
    *,
    check: str,
    target: str,
    platform: str,
    version: str,
    evidence: str,
    tier: int,
    channel: str | None = None,
    rebase_from: str | None = None,
    side: str | None = None,
    round_: int | None = None,
) -> dict[str, str]:
    """The labels a cell test carries from its start (so that a skip still lands in its cell),
    by their names on the wire; a rebase cell's also name the version it starts from, and a
    gate run's cell its side and round. A platform, kind of evidence or side the report would
    refuse is refused here, where the mistake is made."""
    for label, value, allowed in (
        (Label.PLATFORM, platform, PLATFORMS),
        (Label.EVIDENCE, evidence, EVIDENCE),
    ):
        if value not in allowed:
            raise ValueError(f"label {label.key}={value!r}: expected one of: {', '.join(allowed)}")
    labels = {
        Label.CHECK: check,
        Label.TARGET: target,
        Label.PLATFORM: platform,
        Label.VERSION: version,
        Label.EVIDENCE: evidence,
        Label.TIER: str(tier),
    }
    if channel is not None:
        labels[Label.CHANNEL] = channel
    if rebase_from is not None:
        labels[Label.REBASE_FROM] = rebase_from
    if side is not None:
        if side not in SIDES:
            raise ValueError(
                f"label {Label.SIDE.key}={side!r}: expected one of: {', '.join(SIDES)}"
            )
        labels[Label.SIDE] = side
        labels[Label.ROUND] = str(round_ or 0)
    return _on_the_wire(labels)


def incomplete_labels(reason: str) -> dict[str, str]:
    """What a cell adds when the infrastructure failed it (libvirtd died, the disk is full, the
    emulator did not start): the result is incomplete, not a failure of the appliance."""
    return _on_the_wire({Label.INCOMPLETE: _clip(reason.strip().splitlines()[0] or "unknown")})


def boot_labels(*, accel: str, failed_phase: str | None) -> dict[str, str]:
    """What a boot record adds: the accelerator, and the failed phase when one failed."""
    labels = {Label.ACCEL: accel}
    if failed_phase:
        labels[Label.FAILED_PHASE] = failed_phase
    return _on_the_wire(labels)


def context_labels(*, took_effect: Iterable[str], missing: Iterable[str]) -> dict[str, str]:
    """What a context test adds: the steps that took effect and those that did not."""
    return _on_the_wire(
        {Label.TOOK_EFFECT: ",".join(took_effect), Label.MISSING: ",".join(missing)}
    )


RULE_FAILURE_CLIP = 240
"""The longest line ``rebase_labels`` keeps of what a failed rule found (the footnote's text)."""


def rebase_labels(source: str, failed_rules: Sequence[str]) -> dict[str, str]:
    """What a rebase cell adds: the version it started from and the rules that failed.

    Each of ``failed_rules`` is a rule's name ("R1") or a ``Rules.failed`` entry ("R1 changed
    locally and upstream: ...: what was found"); the name is the text before the first space.
    Entries longer than their name are kept too (their first line, clipped), for the footnote.
    """
    entries = [entry.strip() for entry in failed_rules]
    if not source.strip() or not all(entries):
        raise ValueError(f"rebase_labels({source!r}, {list(failed_rules)!r}): an empty name")
    names = [entry.split(maxsplit=1)[0] for entry in entries]
    details = [_clip(entry.splitlines()[0]) for entry in entries if len(entry.split()) > 1]
    labels = {Label.REBASE_FROM: source, Label.FAILED_RULES: ",".join(names)}
    if details:
        labels[Label.RULE_FAILURES] = "\n".join(details)
    return _on_the_wire(labels)


def _clip(line: str) -> str:
    return line if len(line) <= RULE_FAILURE_CLIP else line[: RULE_FAILURE_CLIP - 1] + "…"


def _on_the_wire(labels: Mapping[Label, str]) -> dict[str, str]:
    return {label.key: value for label, value in labels.items()}


# --- reading results (the report) ---------------------------------------------------------------


class ResultsError(ValueError):
    """An allure result of the boot suite is unreadable or mislabelled (names file and label)."""


@dataclass(frozen=True)
class Result:
    """One boot-suite test result, from the ``ucvm.*`` labels of an allure result."""

    check: str
    target: str
    platform: str
    version: str
    evidence: str
    tier: int
    status: str
    message: str
    stop: datetime
    accel: str | None = None
    failed_phase: str | None = None
    console: Path | None = None
    channel: str | None = None  # the contextualization channel (check ``context``)
    took_effect: tuple[str, ...] = ()  # context steps that took effect inside the guest
    missing: tuple[str, ...] = ()  # context steps that did not
    rebase_from: str | None = None  # check ``rebase``: the version the cell started from
    failed_rules: tuple[str, ...] = ()  # the rebase rules that failed, by name (R1, R8)
    rule_failures: tuple[str, ...] = ()  # what they found, a line each ("R1 ...: found")
    figures: Mapping[str, float] = field(default_factory=dict)  # see boot_figures
    side: str | None = None  # a gate run's side (SIDES); None outside a gate run
    round: int = 0  # a gate run: which of the side's boots
    incomplete: str | None = None  # why the infrastructure failed the cell (not a verdict)
    test_id: str = ""  # pytest's node id of the test that wrote it (a gate reruns by it)

    @property
    def ran(self) -> bool:
        return self.status != "skipped"

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failed(self) -> bool:
        """failed, broken, or any status that is neither passed nor skipped."""
        return self.ran and not self.passed

    @property
    def rerun_key(self) -> tuple[str, str, str, str | None, str | None, str | None, int]:
        """What a rerun of the same cell shares (a gate run's rounds are distinct cells)."""
        return (
            self.target, self.version, self.check, self.channel, self.rebase_from, self.side,
            self.round,
        )  # fmt: skip

    @property
    def skip_reason(self) -> str:
        reason = self.message.strip().removeprefix("Skipped:").strip()
        return reason or "skipped without a reason"

    @property
    def first_message_line(self) -> str:
        lines = self.message.strip().splitlines()
        return lines[0].strip() if lines else ""

    @property
    def pair(self) -> str:
        """A rebase cell's ``FROM → TO`` (FROM unknown when the result does not label it)."""
        return f"{self.rebase_from or '(from not labelled)'} → {self.version}"

    def describe(self) -> str:
        if self.check == REBASE_CHECK:
            return f"{self.target} {self.pair} {self.check}"
        channel = f" {self.channel}" if self.channel else ""
        return f"{self.target} {self.version} {self.check}{channel}"


def read_results(dirs: Sequence[Path]) -> list[Result]:
    """All boot-suite results of these allure-results directories (CI shards), merged.

    Results without a ``ucvm.check`` label (ordinary unit tests) are left out. Reruns are
    kept: ``latest_results`` (used by the support table and the gate) picks the newest.
    """
    results: list[Result] = []
    for directory in dirs:
        if not directory.is_dir():
            raise ResultsError(f"{directory}: no such directory of allure results")
        for path in sorted(directory.glob("*-result.json")):
            result = _read_result(path)
            if result is not None:
                results.append(result)
    return results


def latest_results(results: Iterable[Result]) -> list[Result]:
    """One result per ``rerun_key`` (a cell, and in a gate run its side and round): the newest
    ``stop``."""
    newest: dict[tuple[str, str, str, str | None, str | None, str | None, int], Result] = {}
    for result in results:
        kept = newest.get(result.rerun_key)
        if kept is None or result.stop > kept.stop:
            newest[result.rerun_key] = result
    return list(newest.values())


def read_labels(data: Mapping[str, Any]) -> dict[str, str]:
    """The ``ucvm.*`` labels of one allure result (its parsed JSON), by name without ``ucvm.``."""
    labels: dict[str, str] = {}
    for label in data.get("labels") or []:
        name = str(label.get("name", ""))
        if name.startswith(LABEL_PREFIX):
            labels[name.removeprefix(LABEL_PREFIX)] = str(label.get("value", ""))
    return labels


def _read_result(path: Path) -> Result | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path}: unreadable allure result: {error}") from error
    labels = read_labels(data)
    if Label.CHECK not in labels:
        return None
    missing = [label.key for label in REQUIRED_LABELS if label not in labels]
    if missing:
        raise ResultsError(f"{path}: missing label(s): {', '.join(missing)}")
    return Result(
        check=labels[Label.CHECK],
        target=labels[Label.TARGET],
        platform=_label_choice(path, labels, Label.PLATFORM, PLATFORMS),
        version=labels[Label.VERSION],
        evidence=_label_choice(path, labels, Label.EVIDENCE, EVIDENCE),
        tier=_tier(path, labels[Label.TIER]),
        status=str(data.get("status") or "unknown"),
        message=str((data.get("statusDetails") or {}).get("message") or ""),
        stop=_stop(path, data),
        accel=labels.get(Label.ACCEL),
        failed_phase=labels.get(Label.FAILED_PHASE),
        console=_console(path.parent, data),
        channel=labels.get(Label.CHANNEL) or None,
        took_effect=_steps(labels.get(Label.TOOK_EFFECT)),
        missing=_steps(labels.get(Label.MISSING)),
        rebase_from=labels.get(Label.REBASE_FROM) or None,
        failed_rules=_steps(labels.get(Label.FAILED_RULES)),
        rule_failures=tuple(
            line.strip()
            for line in labels.get(Label.RULE_FAILURES, "").splitlines()
            if line.strip()
        ),
        figures=_figures(path, data),
        side=_label_choice(path, labels, Label.SIDE, SIDES) if Label.SIDE in labels else None,
        round=_round(path, labels.get(Label.ROUND, "0")),
        incomplete=labels.get(Label.INCOMPLETE) or _infrastructure(data),
        test_id=_node_id(data),
    )


def _node_id(data: Mapping[str, Any]) -> str:
    """pytest's node id from allure-pytest's ``fullName`` (``suites.boot.test_boot#test_x``)
    and ``name`` (``test_x[kvm-1.2]``): ``suites/boot/test_boot.py::test_x[kvm-1.2]``."""
    module, _, _ = str(data.get("fullName") or "").partition("#")
    name = str(data.get("name") or "")
    if not module or not name:
        return ""
    return f"{module.replace('.', '/')}.py::{name}"


def _infrastructure(data: Mapping[str, Any]) -> str | None:
    """The reason of a result broken by INFRASTRUCTURE_ERROR (allure-pytest writes a broken
    test's message as ``module.Class: text``), else None."""
    if data.get("status") != "broken":
        return None
    message = str((data.get("statusDetails") or {}).get("message") or "")
    name, _, reason = message.partition(": ")
    if name.rpartition(".")[2] != INFRASTRUCTURE_ERROR:
        return None
    return _clip(reason.strip().splitlines()[0] if reason.strip() else INFRASTRUCTURE_ERROR)


def _round(path: Path, value: str) -> int:
    if not value.isdigit():
        raise ResultsError(f"{path}: label {Label.ROUND.key}={value!r}: expected 0, 1, 2, ...")
    return int(value)


def boot_figures(record: Mapping[str, Any]) -> dict[str, float]:
    """The figures of one boot record (BootRecord as a dict): ``ready_s`` (host seconds to
    `ready`), ``guest_ready_s``, ``phase_s.NAME`` per phase, the `ready` marker's counters
    (READY_COUNTERS), ``cloud_init_warnings`` and the suite's measurements. A figure the
    record lacks (a boot that never got ready has no ``ready_s``) is absent, never 0."""
    figures: dict[str, float] = {}
    previous = 0.0
    ready: Mapping[str, Any] | None = None
    for phase in record.get("phases") or []:
        guest_s = float(phase.get("guest_s") or 0.0)
        key = PHASE_FIGURE + str(phase.get("name"))
        figures[key] = figures.get(key, 0.0) + max(guest_s - previous, 0.0)
        previous = guest_s
        if phase.get("name") == "ready":
            ready = phase
    if ready is not None:
        if ready.get("host_s") is not None:
            figures["ready_s"] = float(ready["host_s"])
        figures["guest_ready_s"] = float(ready.get("guest_s") or 0.0)
        fields = ready.get("fields") or {}
        for counter in READY_COUNTERS:
            value = str(fields.get(counter, ""))
            if value.isdigit():
                figures[counter] = float(value)
    steps = record.get("context_steps") or []
    warnings = [
        s
        for s in steps
        if s.get("step") == "cloud-init" and s.get("status") in CLOUD_INIT_COMPLAINTS
    ]
    if ready is not None:
        figures["cloud_init_warnings"] = float(len(warnings))
    for name, value in (record.get("measurements") or {}).items():
        if isinstance(value, int | float):
            figures[str(name)] = float(value)
    return figures


def _figures(path: Path, data: Mapping[str, Any]) -> dict[str, float]:
    """The figures of the result's (last) boot record attachment; none without one."""
    records = [
        a for a in _attachments(data) if a.get("name") == BOOT_RECORD_ATTACHMENT and a.get("source")
    ]
    if not records:
        return {}
    source = path.parent / str(records[-1]["source"])
    try:
        record = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}  # a results directory copied without its attachments: no figures, not an error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{source}: unreadable boot record of {path.name}: {error}") from error
    if not isinstance(record, dict):
        raise ResultsError(f"{source}: a boot record of {path.name} must be a JSON object")
    return boot_figures(record)


def _steps(value: str | None) -> tuple[str, ...]:
    """A comma-separated label value as a tuple; empty or absent gives ()."""
    return tuple(step.strip() for step in (value or "").split(",") if step.strip())


def _label_choice(
    path: Path, labels: Mapping[str, str], label: Label, allowed: Sequence[str]
) -> str:
    value = labels[label]
    if value not in allowed:
        raise ResultsError(
            f"{path}: label {label.key}={value!r}: expected one of: {', '.join(allowed)}"
        )
    return value


def _tier(path: Path, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        message = f"{path}: label {Label.TIER.key}={value!r}: expected 1, 2 or 3"
        raise ResultsError(message) from None


def _stop(path: Path, data: Mapping[str, Any]) -> datetime:
    millis = data.get("stop") or data.get("start")
    if not isinstance(millis, int | float):
        raise ResultsError(f"{path}: no 'stop' time (epoch milliseconds)")
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


def _console(directory: Path, data: Mapping[str, Any]) -> Path | None:
    for attachment in _attachments(data):
        if attachment.get("name") == CONSOLE_ATTACHMENT and attachment.get("source"):
            path = directory / str(attachment["source"])
            if path.is_file():
                return path
    return None


def _attachments(node: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Attachments of a result and of its steps, depth first."""
    yield from node.get("attachments") or []
    for step in node.get("steps") or []:
        yield from _attachments(step)
