"""A cell of the history, and its name on the command line.

A cell is what one result of the suites is about: (target, version, check), and for a context
cell its channel, for a rebase cell the version it started from. Its name:

    TARGET/VERSION/CHECK              kvm/newest/boot, vmware/1.0/reboot
    TARGET/VERSION/context/CHANNEL    kvm/previous/context/nocloud
    TARGET/FROM..TO/rebase            kvm/previous..newest/rebase

``ucvm-lab history CELL`` takes a name, or a shell-style pattern of names (``kvm/*/boot``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from lab.evidence import REBASE_CHECK, Result

SYNTAX = "TARGET/VERSION/CHECK, TARGET/VERSION/context/CHANNEL or TARGET/FROM..TO/rebase"


@dataclass(frozen=True, order=True)
class CellKey:
    target: str
    version: str
    check: str
    channel: str = ""  # '' when the check has none
    rebase_from: str = ""

    @classmethod
    def of(cls, result: Result) -> CellKey:
        return cls(
            result.target,
            result.version,
            result.check,
            result.channel or "",
            result.rebase_from or "",
        )

    @property
    def name(self) -> str:
        version = f"{self.rebase_from}..{self.version}" if self.rebase_from else self.version
        parts = [self.target, version, self.check]
        if self.channel:
            parts.append(self.channel)
        return "/".join(parts)

    def matches(self, pattern: str) -> bool:
        return fnmatchcase(self.name, pattern)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot name a cell (None if it can); patterns may use * ? []."""
    parts = pattern.split("/")
    if len(parts) not in (3, 4) or not all(parts):
        return f"{pattern!r}: not a cell name; expected {SYNTAX} (patterns may use * and ?)"
    if len(parts) == 4 and parts[2] == REBASE_CHECK:
        return f"{pattern!r}: a rebase cell has no channel; expected TARGET/FROM..TO/rebase"
    return None
