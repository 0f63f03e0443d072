"""Shopping list + repository -> a closed, fully versioned package list, by the paper's ILP.

The model (μCernVM, CHEP 2013), one binary variable x_p per (package, version):
- `a` needs `b | c`:                 x_b + x_c - x_a >= 0    (Depends and Pre-Depends)
- `a` conflicts with `b`:            x_a + x_b <= 1          (Conflicts and Breaks)
- at most one version per name:      sum of x over its versions <= 1
- each wanted name, and each Essential name, is installed: sum of its candidates >= 1
- a requirement nothing satisfies:   x_a = 0

The objective, minimised:  sum_p x_p * (1 + M * rank(p)),  M = number of variables + 1,
where rank(p) is 0 for the newest version of p's name in the whole repository, 1 for the one
before, and so on. So the solution first has the newest versions it can (the sum of ranks is
minimal: security and point-release updates win), and among those the fewest packages (the
1 per package breaks the remaining ties). Newest-first is deliberate: a release manager
pins what is current; "fewest packages" alone would happily keep an old version that has
one dependency less.

The model is reduced before solving: only packages reachable from the wanted and Essential
names through dependencies (all alternatives, all providers) become variables. The paper's
whole-repository model is available with reduce=False, for comparison.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highspy
import numpy as np

from lab import proc
from lab.messages import clip
from lab.packages.model import Package, Relation, Repository

NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]+$")  # Debian Policy 5.6.1: two characters or more
ENGINES = ("highs", "glpk")


class ShoppingListError(ValueError):
    """Bad shopping list: one line per problem, each naming the file, the line and the package."""


@dataclass(frozen=True)
class Wanted:
    name: str
    version: str | None = None  # pinned with name=version
    line: int = 0

    def relation(self) -> Relation:
        return Relation(self.name, "=" if self.version else None, self.version)

    def candidates(self, repository: Repository) -> tuple[Package, ...]:
        """What installs this item: the named package itself when it is a real one (a provider
        of the same name is another package: wanting busybox must not give busybox-static);
        any provider only for a purely virtual name."""
        if self.name in repository.by_name:
            return tuple(
                p for p in repository.by_name[self.name] if self.version in (None, p.version)
            )
        return repository.satisfiers(self.relation())

    def __str__(self) -> str:
        return f"{self.name}={self.version}" if self.version else self.name


def read_shopping_list(path: Path, repository: Repository) -> list[Wanted]:
    """One package per line, `name` or `name=version`; `#` starts a comment."""
    wanted: list[Wanted] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(list_text(path).splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        name, _, version = (part.strip() for part in text.partition("="))
        problem = shopping_problem(repository, name, version, seen.get(name))
        if problem:
            problems.append(f"{path}:{number}: package {clip(name or text)}: {problem}")
            continue
        seen[name] = number
        wanted.append(Wanted(name, version or None, number))
    if problems:
        raise ShoppingListError("\n".join(problems))
    if not wanted:
        raise ShoppingListError(
            f"{path}: no package names; a shopping list lists one package per line"
        )
    return wanted


LIST_MAX_ENV = "UCVM_LIST_MAX_BYTES"
LIST_MAX_BYTES = 8 << 20  # a 500-package list is 5 kB: anything near this is not a list


def list_max_bytes() -> int:
    value = os.environ.get(LIST_MAX_ENV, "")
    if not value:
        return LIST_MAX_BYTES
    if not value.isdigit() or int(value) < 1:
        raise ShoppingListError(f"{LIST_MAX_ENV}={clip(value)}: expected a size in bytes (>= 1)")
    return int(value)


def list_text(path: Path) -> str:
    """The shopping list's text: a file of at most list_max_bytes(), in UTF-8."""
    limit = list_max_bytes()
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except OSError as error:
        raise ShoppingListError(
            f"{path}: cannot read the shopping list ({error.strerror}); give a text file that "
            "lists one package per line"
        ) from error
    if len(data) > limit:
        raise ShoppingListError(
            f"{path}: more than {limit:,} bytes, too big for a shopping list; list one package "
            f"per line (or raise the limit with {LIST_MAX_ENV}=BYTES)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ShoppingListError(
            f"{path}:{line}: byte 0x{data[error.start]:02x} is not UTF-8; save the list as "
            "UTF-8 text"
        ) from error


def shopping_problem(
    repository: Repository, name: str, version: str, first_line: int | None
) -> str | None:
    if not NAME.match(name):
        return "not a package name; expected two or more lower-case letters, digits and + - ."
    if first_line is not None:
        return f"listed twice (first on line {first_line}); list each package once"
    if not repository.knows(name):
        close = difflib.get_close_matches(name, repository.by_name.keys(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"no such package or virtual name in the index(es){hint}"
    if version:
        available = [p.version for p in repository.by_name.get(name, ())]
        if version not in available:
            listed = ", ".join(available) or "none (it is only a virtual name)"
            shown = clip(version, quote=False)
            return f"version {shown} is not in the index(es); available: {listed}"
    return None


# --- the model ----------------------------------------------------------------------------


@dataclass
class Model:
    repository: Repository
    wanted: list[Wanted]
    variables: list[Package]
    costs: np.ndarray
    upper: np.ndarray  # 0 for a package with a requirement nothing satisfies
    row_starts: list[int] = field(default_factory=lambda: [0])
    row_columns: list[int] = field(default_factory=list)
    row_values: list[float] = field(default_factory=list)
    row_lower: list[float] = field(default_factory=list)
    row_upper: list[float] = field(default_factory=list)
    row_kinds: list[str] = field(default_factory=list)
    build_s: float = 0.0

    @property
    def inequalities(self) -> int:
        return len(self.row_lower)

    def add_row(
        self, columns: Sequence[int], values: Sequence[float], lower: float, upper: float, kind: str
    ) -> None:
        self.row_columns.extend(columns)
        self.row_values.extend(values)
        self.row_starts.append(len(self.row_columns))
        self.row_lower.append(lower)
        self.row_upper.append(upper)
        self.row_kinds.append(kind)

    def counts(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for kind in self.row_kinds:
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "variables": len(self.variables),
            "inequalities": self.inequalities,
            "fixed_to_zero": int((self.upper == 0).sum()),
            **kinds,
        }


def essential_names(repository: Repository) -> list[str]:
    return sorted({p.name for p in repository.packages if p.essential})


def reachable(repository: Repository, roots: Iterable[Package]) -> list[Package]:
    """Everything a root could pull in: every satisfier of every alternative, transitively."""
    seen: set[Package] = set()
    todo = list(roots)
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        for clause in package.requirements():
            for relation in clause:
                todo.extend(repository.satisfiers(relation))
    return sorted(seen, key=lambda p: p.key)


def build_model(repository: Repository, wanted: Sequence[Wanted], *, reduce: bool = True) -> Model:
    started = time.perf_counter()
    essentials = essential_names(repository)
    demands = [("wanted", w.candidates(repository)) for w in wanted] + [
        ("essential", tuple(repository.by_name[name])) for name in essentials
    ]
    roots = [p for _, candidates in demands for p in candidates]
    variables = (
        reachable(repository, roots) if reduce else sorted(repository.packages, key=lambda p: p.key)
    )
    index = {package: column for column, package in enumerate(variables)}
    weight = len(variables) + 1
    costs = np.array([1.0 + weight * repository.version_rank(p) for p in variables])
    model = Model(repository, list(wanted), variables, costs, np.ones(len(variables)))

    for column, package in enumerate(variables):
        add_requirements(model, index, column, package)
    add_conflicts(model, index)
    add_one_version_per_name(model, index)
    for kind, candidates in demands:
        columns = sorted({index[p] for p in candidates if p in index})
        model.add_row(columns, [1.0] * len(columns), 1.0, highspy.kHighsInf, kind)
    model.build_s = time.perf_counter() - started
    return model


def add_requirements(
    model: Model, index: dict[Package, int], column: int, package: Package
) -> None:
    for clause in package.requirements():
        satisfiers = {
            index[q] for rel in clause for q in model.repository.satisfiers(rel) if q in index
        }
        if column in satisfiers:
            continue  # the package satisfies its own requirement (e.g. through Provides)
        if not satisfiers:
            model.upper[column] = 0.0
            continue
        columns = sorted(satisfiers)
        model.add_row(
            [*columns, column], [1.0] * len(columns) + [-1.0], 0.0, highspy.kHighsInf, "needs"
        )


def add_conflicts(model: Model, index: dict[Package, int]) -> None:
    pairs: set[tuple[int, int]] = set()
    for package, column in index.items():
        for other in model.repository.conflicting(package):
            other_column = index.get(other)
            if other_column is not None and other.name != package.name:
                pairs.add((min(column, other_column), max(column, other_column)))
    for first, second in sorted(pairs):
        model.add_row([first, second], [1.0, 1.0], -highspy.kHighsInf, 1.0, "conflicts")


def add_one_version_per_name(model: Model, index: dict[Package, int]) -> None:
    by_name: dict[str, list[int]] = {}
    for package, column in index.items():
        by_name.setdefault(package.name, []).append(column)
    for columns in by_name.values():
        if len(columns) > 1:
            model.add_row(
                sorted(columns), [1.0] * len(columns), -highspy.kHighsInf, 1.0, "one-version"
            )


# --- solving ------------------------------------------------------------------------------


@dataclass
class Solution:
    engine: str
    status: str  # optimal | infeasible | time-limit | error
    objective: float | None
    gap: float | None
    packages: list[Package]
    solve_s: float
    detail: str = ""

    @property
    def optimal(self) -> bool:
        return self.status == "optimal"

    @classmethod
    def error(cls, engine: str, elapsed: float, detail: str) -> Solution:
        return cls(engine, "error", None, None, [], elapsed, detail)


def solve(model: Model, engine: str = "highs", *, time_limit: float = 60.0) -> Solution:
    if engine == "highs":
        return solve_highs(model, time_limit)
    if engine == "glpk":
        return solve_glpk(model, time_limit)
    raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")


def highs_model(model: Model) -> highspy.Highs:
    lp = highspy.HighsLp()
    lp.num_col_ = len(model.variables)
    lp.num_row_ = model.inequalities
    lp.col_cost_ = model.costs
    lp.col_lower_ = np.zeros(len(model.variables))
    lp.col_upper_ = model.upper
    lp.row_lower_ = np.array(model.row_lower)
    lp.row_upper_ = np.array(model.row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array(model.row_starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(model.row_columns, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(model.row_values)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * len(model.variables)
    highs = quiet_highs()
    highs.passModel(lp)
    return highs


def quiet_highs() -> highspy.Highs:
    """A Highs object that prints nothing. The first one made in a process prints a banner on
    file descriptor 1, before any option can be set; send that one to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highs = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    highs.setOptionValue("output_flag", False)
    return highs


def solve_highs(model: Model, time_limit: float) -> Solution:
    highs = highs_model(model)
    highs.setOptionValue("time_limit", float(time_limit))
    highs.setOptionValue("mip_rel_gap", 0.0)
    started = time.perf_counter()
    highs.run()
    elapsed = time.perf_counter() - started
    status = highs.getModelStatus()
    names = {
        highspy.HighsModelStatus.kOptimal: "optimal",
        highspy.HighsModelStatus.kInfeasible: "infeasible",
        highspy.HighsModelStatus.kTimeLimit: "time-limit",
    }
    verdict = names.get(status, "error")
    info = highs.getInfo()
    packages: list[Package] = []
    objective = gap = None
    if verdict in ("optimal", "time-limit") and info.primal_solution_status == 2:
        values = highs.getSolution().col_value
        packages = [p for p, value in zip(model.variables, values, strict=True) if value > 0.5]
        objective, gap = info.objective_function_value, info.mip_gap
    return Solution(
        "highs", verdict, objective, gap, packages, elapsed, highs.modelStatusToString(status)
    )


GLPK_STATUS = {"o": "optimal", "f": "time-limit", "n": "infeasible", "u": "error"}


def solve_glpk(model: Model, time_limit: float) -> Solution:
    """glpk (the paper's engine) through glpsol, with cuts (its default branch-and-bound alone
    rarely proves an optimum on these models), on the same model written as MPS by HiGHS."""
    with tempfile.TemporaryDirectory(prefix="ucvm-glpk-") as work:
        mps, solution = Path(work) / "model.mps", Path(work) / "solution.txt"
        highs_model(model).writeModel(str(mps))
        started = time.perf_counter()
        run = proc.run(
            "glpsol", "--freemps", mps, "--min", "--cuts", "--tmlim",
            str(max(1, int(time_limit))), "-w", solution,
            check=False,  # the solution file, not the exit code, says how it went
            error=FileNotFoundError,  # no glpsol: an OSError, as the CLI expects
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        if not solution.exists():
            return Solution.error("glpk", elapsed, run.stdout[-500:])
        return read_glpk_solution(model, solution.read_text(), elapsed, run.stdout)


def read_glpk_solution(model: Model, text: str, elapsed: float, log: str) -> Solution:
    values = [0.0] * len(model.variables)
    status, objective = "u", None
    for line in text.splitlines():
        fields = line.split()
        if fields[:2] == ["s", "mip"]:
            if int(fields[3]) != len(model.variables):  # columns are matched by position
                detail = f"glpsol solved {fields[3]} columns, the model has {len(model.variables)}"
                return Solution.error("glpk", elapsed, detail)
            status, objective = fields[4], float(fields[5])
        elif fields and fields[0] == "j":
            values[int(fields[1]) - 1] = float(fields[2])
    verdict = GLPK_STATUS.get(status, "error")
    if verdict == "time-limit" and "TIME LIMIT EXCEEDED" not in log:
        verdict = "error"
    gaps = re.findall(r"([\d.]+)% \(\d+; \d+\)", log)  # glpsol: "... 2.5% (12; 0)"
    gap = 0.0 if verdict == "optimal" else (float(gaps[-1]) / 100 if gaps else None)
    packages = [p for p, value in zip(model.variables, values, strict=True) if value > 0.5]
    if verdict not in ("optimal", "time-limit"):
        packages, objective = [], None
    elif abs((objective or 0.0) - float(np.dot(model.costs, values))) > 1e-6 * (objective or 1):
        return Solution.error("glpk", elapsed, "glpsol's objective does not match its packages")
    detail = next((line for line in log.splitlines() if "SOLUTION" in line or "LIMIT" in line), "")
    return Solution("glpk", verdict, objective, gap, packages, elapsed, detail.strip())
