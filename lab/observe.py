"""Serial console -> boot record: the phases with guest uptime and host time, the accelerator,
and how the boot ended (ready, a failed phase, a kernel panic, a hang).

The guest prints ``ucvm: phase=NAME t=UPTIME [key=value ...]`` per phase (see DESIGN.md);
``phase=ready`` ends the boot. A failed phase carries ``status=failed reason=WORD``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lab.targets.base import (
    InfrastructureError,
    Instance,
    InstanceGone,
    TargetError,
    WaitAborted,
    WaitTimeout,
)

# Markers count only at the start of a console line (the guest's own writer prints them so;
# a value from user-data or metadata is quoted and escaped by the guest, so it can never start
# a line). A kernel message (`[  5.02] ...`) that cuts into a marker ends its fields there,
# unless it is inside a quoted value.
LINE_START = r"^\r?"
UPTIME = r"\d+(?:\.\d+)?"  # seconds, as /proc/uptime gives them
MARKER = re.compile(
    LINE_START + r"ucvm: phase=(?P<name>[\w-]+) t=(?P<t>" + UPTIME + r")(?=\s|$)(?P<rest>.*)"
)
QUOTED = r'"(?P<quoted>(?:[^"\\]|\\.)*)"'
FIELD = re.compile(r"(?P<key>\w+)=(?:" + QUOTED + r"|(?P<plain>[^\s\"]*))")
KERNEL_CUT = re.compile(r'"(?:[^"\\]|\\.)*"|(?P<stamp>\[\s*\d+\.\d+\])')
ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
NAMED_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t"}
PANIC = re.compile(
    LINE_START + r"(?:\[\s*\d+\.\d+\] )?Kernel panic - not syncing: ?(?P<why>.*)", re.MULTILINE
)
BREAK = re.compile(LINE_START + r"ucvm: break before phase=(?P<name>[\w-]+)", re.MULTILINE)
# The boot loader's contextualization, a line per step (lab/build/initramfs/context)
CONTEXT_STEP = re.compile(
    LINE_START
    + r"ucvm: context step=(?P<step>[\w-]+) status=(?P<status>[\w-]+)(?=\s|$)(?P<rest>.*)"
)
# What ends a wait early: the boot can no longer reach `ready` (Instance.wait_for patterns,
# matched line by line; `^` is the start of a line).
FAILURE = (
    LINE_START + r"ucvm: phase=[\w-]+ t=" + UPTIME + r" status=failed(?:\s|$)"
    r"|" + LINE_START + r"(?:\[\s*\d+\.\d+\] )?Kernel panic - not syncing"
)
READY = LINE_START + r"ucvm: phase=ready t=" + UPTIME + r"(?:\s|$)"
# The phases, in order: the boot loader's, then the OS's own `ready` (printed by the booted OS;
# with ucvm.os=none the boot loader prints it right after scratch).
LOADER_PHASES = ("start", "modules", "network", "context", "scratch")
OS_PHASES = ("repo", "mount", "switch_root")
PHASES = (*LOADER_PHASES, *OS_PHASES, "ready")
# Phases only some boots have: a two-phase boot's kexec (phase 1 prints start ... scratch and
# `kexec step=load`, phase 2 start ... scratch again and `kexec from=`), and the rebase onto a
# new snapshot. They are outside PHASES, so a plain boot's phases are exactly PHASES.
OPTIONAL_PHASES = ("kexec", "rebase")
# The OS's `ucvm-update --check --notify` finding (lab/build/os-files/usr/sbin/ucvm-update)
UPDATE = re.compile(
    LINE_START + r"ucvm: update status=(?P<status>[\w-]+)(?=\s|$)(?P<rest>.*)", re.MULTILINE
)


@dataclass
class Phase:
    name: str
    guest_s: float
    host_s: float | None
    status: str = "ok"
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class ContextStep:
    """One step of the boot loader's contextualization: what it did with the channel."""

    step: str  # channel, hostname, network, cvmfs_tag, ..., ucernvm (a rejected line), user-data
    status: str  # found | applied | rejected | unreachable | none | failed | handed-on
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class BootRecord:
    instance: str
    outcome: str  # ready | failed | panic | hang | gone | error
    phases: list[Phase]
    accel: str
    accel_reason: str = ""
    failed_phase: str | None = None
    reason: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Figures measured beside the console (a suite's cross-checks: the server's bytes sent)
    measurements: dict[str, int] = field(default_factory=dict)
    context_steps: list[ContextStep] = field(default_factory=list)

    def context_step(self, step: str) -> ContextStep | None:
        """The last line of that step (a step is reported once, a rejected line each time)."""
        return next((s for s in reversed(self.context_steps) if s.step == step), None)

    @property
    def ready(self) -> bool:
        return self.outcome == "ready"

    def phase(self, name: str) -> Phase | None:
        """The phase's last marker: a two-phase boot prints start ... scratch twice, and the
        second is the boot that went on."""
        return next((p for p in reversed(self.phases) if p.name == name), None)

    def phases_named(self, name: str) -> list[Phase]:
        return [p for p in self.phases if p.name == name]

    @property
    def host_to_ready_s(self) -> float | None:
        ready = self.phase("ready")
        return ready.host_s if ready else None

    @property
    def guest_to_ready_s(self) -> float | None:
        ready = self.phase("ready")
        return ready.guest_s if ready else None

    def ready_field(self, key: str) -> str | None:
        ready = self.phase("ready")
        return ready.fields.get(key) if ready else None

    @property
    def os_version(self) -> str | None:
        """The OS tag the boot reached (`none` for a boot loader-only boot)."""
        return self.ready_field("os")

    def ready_bytes(self, key: str) -> int | None:
        """A byte count from the `ready` marker (cache_bytes, fetched_bytes)."""
        value = self.ready_field(key)
        return int(value) if value and value.isdigit() else None

    def summary(self) -> str:
        if not self.ready:
            return f"{self.outcome} in phase {self.failed_phase}: {self.reason}"
        host = self.host_to_ready_s
        host_text = f"after {host:.1f} s host time" if host is not None else "(host time unknown)"
        return f"ready {host_text} ({self.guest_to_ready_s:.2f} s guest uptime), accel {self.accel}"

    def phase_table(self) -> str:
        rows = [f"{'phase':<10} {'guest s':>8} {'host s':>8}  status  details"]
        for phase in self.phases:
            host = f"{phase.host_s:8.2f}" if phase.host_s is not None else f"{'-':>8}"
            details = " ".join(f"{k}={v}" for k, v in phase.fields.items())
            rows.append(
                f"{phase.name:<10} {phase.guest_s:8.2f} {host}  {phase.status:<6}  {details}"
            )
        rows.append(f"outcome: {self.summary()}; OS: {self.os_version or '-'}")
        rows += [f"{key}: {value:,}" for key, value in self.measurements.items()]
        for step in self.context_steps:
            details = " ".join(f"{k}={v}" for k, v in step.fields.items())
            rows.append(f"context {step.step}: {step.status} {details}".rstrip())
        return "\n".join(rows)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"summary": self.summary()}, indent=2)


def unescape(text: str) -> str:
    r"""A quoted value's text as the guest had it: \\ \" \n \r \t and \xHH (bytes, which
    may spell UTF-8) undone."""
    data, at = bytearray(), 0
    for escape in ESCAPE.finditer(text):
        code = escape[1]
        data += text[at : escape.start()].encode()
        if len(code) == 3:  # xHH
            data.append(int(code[1:], 16))
        else:
            data += NAMED_ESCAPES.get(code, code.encode())
        at = escape.end()
    data += text[at:].encode()
    return data.decode("utf-8", "replace")


def cut_kernel_output(text: str) -> str:
    """``text`` up to the first kernel message outside a quoted value."""
    for match in KERNEL_CUT.finditer(text):
        if match["stamp"]:
            return text[: match.start()]
    return text


def parse_fields(text: str) -> dict[str, str]:
    return {
        m["key"]: unescape(m["quoted"]) if m["quoted"] is not None else m["plain"]
        for m in FIELD.finditer(cut_kernel_output(text))
    }


def parse_phases(lines: list[tuple[float | None, str]]) -> list[Phase]:
    """Markers from (host seconds, line) pairs; host time is None where it is unknown."""
    phases = []
    for host_s, line in lines:
        match = MARKER.match(line)
        if match:
            fields = parse_fields(match["rest"])
            status = fields.pop("status", "ok")
            phases.append(Phase(match["name"], float(match["t"]), host_s, status, fields))
    return phases


def parse_context_steps(lines: list[tuple[float | None, str]]) -> list[ContextStep]:
    steps = []
    for _, line in lines:
        match = CONTEXT_STEP.match(line)
        if match:
            steps.append(ContextStep(match["step"], match["status"], parse_fields(match["rest"])))
    return steps


def next_phase_after(phases: list[Phase]) -> str:
    known = [p.name for p in phases if p.name in PHASES]
    if not known:
        return PHASES[0]
    last = known[-1]
    if PHASES.index(last) + 1 < len(PHASES):
        return PHASES[PHASES.index(last) + 1]
    return last


def update_findings(console: str) -> list[dict[str, str]]:
    """Each `ucvm: update status=...` line: its status and fields, in order."""
    return [
        {"status": match["status"], **parse_fields(match["rest"])}
        for match in UPDATE.finditer(console)
    ]


def judge(
    phases: list[Phase], console: str, *, waited: str | None = None
) -> tuple[str, str | None, str | None]:
    """(outcome, failed phase, reason) from what the console shows and how the wait ended."""
    failed = next((p for p in phases if p.status == "failed"), None)
    if failed:
        fields = dict(failed.fields)
        why = fields.pop("reason", "failed").replace("-", " ")  # repository-unreachable -> words
        detail = ", ".join(f"{k}={v}" for k, v in fields.items())
        return "failed", failed.name, f"{why} ({detail})" if detail else why
    panic = PANIC.search(console)
    if panic:
        return "panic", next_phase_after(phases), f"kernel panic: {panic['why'].strip()}"
    if any(p.name == "ready" for p in phases):
        return "ready", None, None
    stopped = BREAK.search(console)
    pending = stopped["name"] if stopped else next_phase_after(phases)
    if waited == "timeout":
        why = f" (held by ucvm.break={stopped['name']})" if stopped else ""
        return "hang", pending, f"no `ready` within the budget; stuck before phase {pending}{why}"
    if waited == "gone":
        return "gone", pending, "the guest stopped running before `ready`"
    return "error", pending, waited or "the boot ended without `ready`"


def record_from_console(
    console: str,
    timeline: list[tuple[float, str]] | None = None,
    *,
    instance: str = "",
    accel: str = "unknown",
    waited: str | None = None,
) -> BootRecord:
    """A boot record from a console text; ``timeline`` gives the host time of each line."""
    lines: list[tuple[float | None, str]] = (
        list(timeline) if timeline else [(None, line.rstrip("\r")) for line in console.split("\n")]
    )
    phases = parse_phases(lines)
    outcome, failed_phase, reason = judge(phases, console, waited=waited)
    return BootRecord(
        instance, outcome, phases, accel, failed_phase=failed_phase, reason=reason,
        context_steps=parse_context_steps(lines),
    )  # fmt: skip


def observe_boot(instance: Instance, budget_s: float) -> BootRecord:
    """Wait for the current boot of ``instance`` to reach `ready` (or fail), and record it."""
    waited = None
    try:
        instance.wait_for(READY, budget_s, stop_on=FAILURE)
    except WaitAborted:
        time.sleep(0.5)  # let the rest of the failure message reach the console
        instance.timeline.feed(instance.console())
    except WaitTimeout:
        waited = "timeout"
    except InstanceGone:
        waited = "gone"
    except InfrastructureError:
        raise  # not the guest's doing: the cell is incomplete, not failed
    except TargetError as error:
        waited = str(error)
    record = record_from_console(
        instance.current_boot_console(),
        instance.current_boot_timeline(),
        instance=instance.name,
        accel=instance.accel,
        waited=waited,
    )
    record.accel_reason = instance.accel_reason
    return record


def guest_cache_stats(instance: Instance) -> dict[str, int]:
    """The guest's block-client stats (cached_bytes, fetched_bytes, evicted_blocks,
    verify_failures), read now through the command channel of the booted OS."""
    result = instance.run('. /.ucvm/boot.env && cat "$UCVM_CACHE_STATS"', timeout=20)
    if not result.ok:
        raise TargetError(f"cannot read the guest's cache stats: {result.output.strip()}")
    pairs = (line.split() for line in result.output.splitlines())
    return {k: int(v) for k, v in (p for p in pairs if len(p) == 2 and p[1].isdigit())}


def settled_fetch_counts(
    instance: Instance, server_image_bytes: Callable[[], int], settle_s: float
) -> tuple[dict[str, int], int, float]:
    """The guest's cache stats and the server's image bytes for it, read again (once a second)
    until the guest's fetched_bytes and the server's count agree, or ``settle_s`` has passed:
    a block in flight shows in one count before the other. Returns (stats, server bytes,
    seconds waited)."""
    started = time.monotonic()
    while True:
        stats = guest_cache_stats(instance)
        sent = server_image_bytes()
        waited = time.monotonic() - started
        if stats.get("fetched_bytes") == sent or waited >= settle_s:
            return stats, sent, waited
        time.sleep(1)
