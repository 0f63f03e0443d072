"""What changed between two runs of the same matrix: outcomes, cells, and figures.

Each cell of the newer run is held against the same cell of the older one:
- **new failure**: failed now, passed (or was skipped) before; **fixed**: passed now, failed
  before; **not run**: skipped now, ran before; **runs again**: passed now, skipped before;
- **new cell** / **gone**: in one run only;
- **figure**: a figure both runs have that moved by ``ratio`` or more either way (new / old
  >= ratio, or <= 1 / ratio; from 0 to anything is a move). Moves smaller than a figure's
  noise floor are not changes: half a second for times (``*_s``, ``phase_s.*``), 64 KiB for
  bytes (``*_bytes``); counts (units_failed, cloud_init_warnings) have none.
Cells that failed in both runs are listed apart (still failing), not as changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from lab.history.cells import CellKey
from lab.history.query import CellRow

DEFAULT_RATIO = 1.25
NOISE_FLOORS: tuple[tuple[str, float], ...] = (("_bytes", 65536.0), ("_s", 0.5))
"""(how a figure's name ends, the smallest move of it that counts); phase_s.* counts as _s."""
CHANGE_ORDER = ("new failure", "gone", "not run", "new cell", "fixed", "runs again", "figure")


@dataclass(frozen=True)
class Change:
    """One thing that changed: ``change`` is one of CHANGE_ORDER."""

    change: str
    cell: str  # the cell's name (lab.history.cells)
    before: str  # the older run's status, or figure value ('' when it had no such cell)
    now: str
    detail: str = ""  # the failed phase or message; for a figure, its name and ratio
    figure: str | None = None
    ratio: float | None = None  # now / before, for a figure (None: from 0)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def noise_floor(figure: str) -> float:
    if figure.startswith("phase_s."):
        return NOISE_FLOORS[1][1]
    return next((floor for suffix, floor in NOISE_FLOORS if figure.endswith(suffix)), 0.0)


def show_value(figure: str, value: float) -> str:
    if figure.endswith("_bytes"):
        return f"{value:,.0f}"
    if figure.endswith("_s") or figure.startswith("phase_s."):
        return f"{value:.2f} s"
    return f"{value:g}"


def figure_moves(
    key: CellKey, before: Mapping[str, float], now: Mapping[str, float], ratio: float
) -> list[Change]:
    moves = []
    for figure in sorted(set(before) & set(now)):
        old, new = before[figure], now[figure]
        if abs(new - old) < max(noise_floor(figure), 1e-12):
            continue
        if old == 0:
            moved, factor = True, None
        else:
            factor = new / old
            moved = factor >= ratio or factor <= 1 / ratio
        if moved:
            said = f"×{factor:.2f}" if factor is not None else "from 0"
            moves.append(
                Change(
                    "figure",
                    key.name,
                    show_value(figure, old),
                    show_value(figure, new),
                    f"{figure} {'↑' if new > old else '↓'} {said}",
                    figure,
                    factor,
                )
            )
    return moves


def why(cell: CellRow) -> str:
    if cell.failed_phase:
        return f"failed in phase {cell.failed_phase}"
    if cell.failed_rules:
        return f"rules {cell.failed_rules} failed"
    return cell.message


def outcome_change(key: CellKey, old: CellRow, new: CellRow) -> Change | None:
    was_run, is_run = old.status != "skipped", new.status != "skipped"
    if new.failed and not old.failed:
        return Change("new failure", key.name, old.status, new.status, why(new))
    if old.failed and new.status == "passed":
        return Change("fixed", key.name, old.status, new.status)
    if was_run and not is_run:
        return Change("not run", key.name, old.status, new.status, new.message)
    if not was_run and new.status == "passed":
        return Change("runs again", key.name, old.status, new.status)
    return None


def compare(
    before: Mapping[CellKey, CellRow],
    now: Mapping[CellKey, CellRow],
    *,
    ratio: float = DEFAULT_RATIO,
) -> list[Change]:
    """What changed from ``before`` to ``now`` (each a run's cells), in CHANGE_ORDER, then by
    cell name."""
    if not ratio > 1:
        raise ValueError(f"ratio {ratio!r}: expected a number > 1 (1.25: moved by 25%)")
    changes: list[Change] = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if old is None and new is not None:
            changes.append(Change("new cell", key.name, "", new.status, why(new)))
        elif new is None and old is not None:
            changes.append(Change("gone", key.name, old.status, ""))
        elif old is not None and new is not None:
            if (outcome := outcome_change(key, old, new)) is not None:
                changes.append(outcome)
            changes += figure_moves(key, old.figures, new.figures, ratio)
    return sorted(changes, key=lambda c: (CHANGE_ORDER.index(c.change), c.cell))


def still_failing(before: Mapping[CellKey, CellRow], now: Mapping[CellKey, CellRow]) -> list[str]:
    """The cells that failed in both runs, by name."""
    return sorted(
        key.name
        for key, cell in now.items()
        if cell.failed and key in before and before[key].failed
    )
