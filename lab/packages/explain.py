"""Why a shopping list has no solution, in terms a release manager can act on.

1. The core: a minimal set of wanted packages that cannot be installed together (with the
   Essential set, which is always in; minimal: leave out any one and the rest can be),
   found with QuickXplain (Junker 2004): a
   divide-and-conquer search that needs about k·log(n/k) feasibility checks for a core of k
   out of n wanted packages, instead of n for a one-by-one deletion.
2. The chain: from each candidate of each core package, the dependencies it is forced to take
   (a requirement with a single satisfier leaves no choice), and the Conflicts/Breaks,
   same-name versions or unsatisfiable requirements where those forced chains collide.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import highspy

from lab.packages.model import Package, Repository
from lab.packages.solve import Wanted, build_model, highs_model

MAX_COMBINATIONS = 64
CHECK_LIMIT_S = 60.0


class ExplainError(RuntimeError):
    """A feasibility check gave no verdict (time limit, solver error): no honest explanation."""


def feasible(repository: Repository, wanted: Sequence[Wanted]) -> bool:
    model = build_model(repository, wanted)
    model.costs[:] = 0.0  # feasibility only
    highs = highs_model(model)
    highs.setOptionValue("time_limit", CHECK_LIMIT_S)
    highs.run()
    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return False
    if status == highspy.HighsModelStatus.kOptimal:
        return True
    raise ExplainError(f"a feasibility check ended with {highs.modelStatusToString(status)}")


def minimal_core(repository: Repository, wanted: Sequence[Wanted]) -> list[Wanted]:
    """A minimal subset of ``wanted`` that is infeasible (QuickXplain); [] if the Essential set
    alone already is."""
    if not feasible(repository, []):
        return []

    def quickxplain(
        background: list[Wanted], delta_added: bool, candidates: list[Wanted]
    ) -> list[Wanted]:
        if delta_added and not feasible(repository, background):
            return []
        if len(candidates) == 1:
            return candidates
        half = len(candidates) // 2
        first, second = candidates[:half], candidates[half:]
        core_second = quickxplain(background + first, bool(first), second)
        core_first = quickxplain(background + core_second, bool(core_second), first)
        return core_first + core_second

    return quickxplain([], False, list(wanted))


@dataclass
class Forced:
    """Packages a start package cannot avoid, each with how it was reached."""

    start: Package
    via: dict[Package, tuple[Package, str] | None]  # package -> (who needs it, the relation)
    dead_ends: list[tuple[Package, str]]  # a requirement nothing satisfies

    def chain(self, package: Package) -> str:
        """`start needs r1 -> b needs r2 -> package`, or "" when package is the start."""
        steps = []
        while (step := self.via.get(package)) is not None:
            parent, relation = step
            steps.append(f" needs {relation} -> {package}")
            package = parent
        return f"{package}{''.join(reversed(steps))}" if steps else ""


def forced_from(repository: Repository, start: Package) -> Forced:
    via: dict[Package, tuple[Package, str] | None] = {start: None}
    dead_ends: list[tuple[Package, str]] = []
    todo = [start]
    while todo:
        package = todo.pop()
        for clause in package.requirements():
            options = {q for rel in clause for q in repository.satisfiers(rel)}
            text = " | ".join(map(str, clause))
            if not options:
                dead_ends.append((package, text))
            elif len(options) == 1 and (only := options.pop()) not in via:
                via[only] = (package, text)
                todo.append(only)
    return Forced(start, via, dead_ends)


def collisions(repository: Repository, forced: Sequence[Forced]) -> list[str]:
    """Where the forced chains of one combination of candidates cannot coexist."""
    found = [
        describe(item, package, f"needs {text}, which no package satisfies")
        for item in forced
        for package, text in item.dead_ends
    ]
    chosen = [(item, package) for item in forced for package in item.via]
    for (item_a, a), (item_b, b) in itertools.combinations(chosen, 2):
        rule = clash(repository, a, b)
        if rule:
            chains = [c for c in (item_a.chain(a), item_b.chain(b)) if c]
            found.append("; ".join(chains) + (": " if chains else "") + rule)
    found += blocked_choices(repository, forced, {package for _, package in chosen})
    return sorted(set(found))


def clash(repository: Repository, a: Package, b: Package) -> str | None:
    if a == b:
        return None
    if a.name == b.name:
        return f"only one version of {a.name} can be installed: {a.version} and {b.version}"
    if b in repository.conflicting(a) or a in repository.conflicting(b):
        return f"{a} conflicts with {b} (Conflicts/Breaks)"
    return None


def blocked_choices(
    repository: Repository, forced: Sequence[Forced], chosen: set[Package]
) -> list[str]:
    """A requirement with several options, every one of which clashes with a forced package."""
    found = []
    for item in forced:
        for package in item.via:
            for clause in package.requirements():
                options = {q for rel in clause for q in repository.satisfiers(rel)}
                if len(options) < 2 or options & chosen:
                    continue
                blockers = {
                    o: next((c for c in chosen if clash(repository, o, c)), None)
                    for o in sorted(options, key=lambda p: p.key)
                }
                if all(blockers.values()):
                    why = ", ".join(f"{o} clashes with {c}" for o, c in blockers.items())
                    text = " | ".join(map(str, clause))
                    found.append(describe(item, package, f"needs {text}, but {why}"))
    return found


def describe(item: Forced, package: Package, what: str) -> str:
    chain = item.chain(package)
    return f"{chain + ': ' if chain else ''}{package} {what}"


def explain(repository: Repository, wanted: Sequence[Wanted]) -> list[str]:
    """Lines of text: the core, then the rules that forbid it."""
    if feasible(repository, wanted):
        return ["the list can be installed: there is nothing to explain"]
    core = minimal_core(repository, wanted)
    if not core:
        return ["the Essential packages alone cannot be installed together"]
    names = ", ".join(f"{item} (line {item.line})" if item.line else str(item) for item in core)
    lines = [
        f"cannot be installed together: {names}"
        if len(core) > 1
        else f"cannot be installed: {names}"
    ]
    candidates = [item.candidates(repository) for item in core]
    everything = itertools.product(*candidates)
    combinations = list(itertools.islice(everything, MAX_COMBINATIONS))
    if next(everything, None) is not None:
        lines.append(f"  (the first {MAX_COMBINATIONS} combinations of their versions follow)")
    for combination in combinations:
        forced = [forced_from(repository, package) for package in combination]
        reasons = collisions(repository, forced)
        label = " + ".join(map(str, combination))
        if reasons:
            lines += [f"  with {label}:"] + [f"    {reason}" for reason in reasons]
        else:
            lines.append(
                f"  with {label}: every choice among their alternatives fails "
                "(no single forced chain explains it)"
            )
    return lines
