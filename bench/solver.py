"""Solver: the paper's package-list ILP on a paper-sized synthetic problem and on Debian 12,
HiGHS against glpk (the paper's engine) in the same run, and libsolv as the speed of light.

Two problems, side by side:
(a) a synthetic repository shaped like the paper's (lab.packages.synthetic: 17,000 names, 500
    wanted, ~152,000 inequalities when the whole repository is modelled);
(b) Debian 12 main + updates + security (the pinned corpus in /work/shared/data/solver, read in
    place) with a seeded 500-name list of real, installable-looking names, plus Essential.
Each is modelled twice: the closure (only what the list can reach; the solver's default) and
the whole repository (the paper's model). For each: parse and cached-load time, model time,
variables, inequalities, HiGHS and glpk solve times, status, objective, glpk ÷ HiGHS, and each
against the paper's 10 s. libsolv (Debian's python3-solv, run by the system python) solves the
same list from the same Packages file(s): its time, and its package count and cost beside the
ILP's optimum (libsolv is fast but not optimal). Then scaling: 5k, 17k, 60k names (500 wanted)
and 100, 500, 2000 wanted (17k names).

The anchors are the paper's figures (constants, labelled "paper"); everything else is measured.

    .venv/bin/python bench/solver.py [--quick] [--seed N] [--glpk-limit S] [--repeat N]
                                     [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import lzma
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.artifacts import ArtifactStore
from lab.packages import debian, explain, solve
from lab.packages.model import Repository
from lab.packages.synthetic import Synthetic, generate, write_packages_file

# --- the anchors: the paper's figures (CHEP 2013, Blomer et al.), not measurements -------------
PAPER_SOLVE_S = 10.0  # "under 10 s with glpk"
PAPER_AVAILABLE = 17_000  # "about 17,000 available packages"
PAPER_WANTED = 500  # "500 on the shopping list"
PAPER_INEQUALITIES = 160_000  # "about 160,000 inequalities"
BUDGET_S = 1.0  # DESIGN.md: < 1 s on the paper-sized problem, and faster than glpk

SYSTEM_PYTHON = "/usr/bin/python3"  # python3-solv imports only there
SCALE_NAMES = (5_000, 17_000, 60_000)
SCALE_WANTED = (100, 500, 2_000)

LIBSOLV_SCRIPT = r"""
import json, statistics, sys, time
import solv

job = json.load(sys.stdin)
pool = solv.Pool()
pool.setdisttype(solv.Pool.DISTTYPE_DEB)
pool.setarch(job["arch"])
started = time.perf_counter()
for path in job["files"]:
    handle = solv.xfopen(path)
    pool.add_repo(path).add_debpackages(handle)
    handle.close()
pool.addfileprovides()
pool.createwhatprovides()
parse_s = time.perf_counter() - started
jobs, missing = [], []
for name in job["wanted"]:
    selection = pool.select(name, solv.Selection.SELECTION_NAME)
    if selection.isempty():
        missing.append(name)
    jobs += selection.jobs(solv.Job.SOLVER_INSTALL)
times, problems, chosen = [], [], []
for _ in range(job["repeat"]):
    engine = pool.Solver()
    engine.set_flag(solv.Solver.SOLVER_FLAG_IGNORE_RECOMMENDED, 1)  # the ILP ignores them too
    started = time.perf_counter()
    problems = engine.solve(jobs)
    times.append(time.perf_counter() - started)
    chosen = [] if problems else engine.transaction().newsolvables()
print(json.dumps({
    "parse_s": parse_s, "solve_s": statistics.median(times),
    "solvables": sum(repo.nsolvables for repo in pool.repos),
    "problems": [str(problem) for problem in problems][:5], "missing": missing,
    "packages": [[s.name, s.evr, s.arch] for s in chosen],
}))
"""


# --- what a run measures -----------------------------------------------------------------------


@dataclass
class Engine:
    """One engine's answer to one model."""

    engine: str
    status: str  # optimal | infeasible | time-limit | error | skipped (reason in detail)
    solve_s: float | None
    objective: float | None
    gap: float | None
    packages: int
    detail: str = ""


@dataclass
class Libsolv:
    parse_s: float
    solve_s: float
    solvables: int
    packages: int
    problems: list[str]
    objective: float | None  # libsolv's set under the closure model's cost (None: not mapped)
    keys: list[tuple[str, str, str]] = field(default_factory=list, repr=False)


@dataclass
class ModelRun:
    problem: str
    model: str  # closure | whole
    names: int
    candidates: int
    wanted: int
    variables: int
    inequalities: int
    model_s: float
    highs: Engine
    glpk: Engine


@dataclass
class Problem:
    label: str
    repository: Repository
    wanted: list[str]  # the shopping list, without the Essential names
    essentials: list[str]
    files: list[Path]  # Packages files, uncompressed, for libsolv
    load: dict[str, float]  # parse_s, cached_s, (generate_s)
    notes: list[str] = field(default_factory=list)
    libsolv: Libsolv | None = None


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


# --- the problems ------------------------------------------------------------------------------


def synthetic_problem(
    label: str, synthetic: Synthetic, work: Path, generate_s: float, *, measure_load: bool = True
) -> Problem:
    """The generated repository, written as a Packages file (libsolv reads it; the parse and
    cached-load times are of that file)."""
    path = work / f"synthetic-{synthetic.stats.names}.Packages"
    if not path.exists():
        write_packages_file(synthetic, path)
    load = {"generate_s": generate_s}
    if measure_load:
        _, load["parse_s"] = timed(lambda: debian.read_debian([path]))
        store = ArtifactStore(work / "store")
        debian.load_cached([path], store)  # builds the cache
        _, load["cached_s"] = timed(lambda: debian.load_cached([path], store))
    essentials = solve.essential_names(synthetic.repository)
    return Problem(label, synthetic.repository, synthetic.wanted, essentials, [path], load)


def debian_problem(seed: int, count: int, work: Path) -> Problem:
    try:
        paths = debian.pinned_corpus()
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    _, parse_s = timed(lambda: debian.read_debian(paths))
    debian.load_cached(paths)  # builds the artifact-store cache if this is its first run
    repository, cached_s = timed(lambda: debian.load_cached(paths))
    essentials = solve.essential_names(repository)
    wanted, notes = debian_list(repository, seed, count, set(essentials))
    files = [decompress(path, work) for path in paths]
    load = {"parse_s": parse_s, "cached_s": cached_s}
    return Problem("(b) Debian 12", repository, wanted, essentials, files, load, notes)


def decompress(path: Path, work: Path) -> Path:
    """libsolv reads .xz itself (checked in this run), but FACTS found it misparsing lz4:
    give it plain files."""
    target = work / path.name.removesuffix(".xz")
    with lzma.open(path) as source, target.open("wb") as sink:
        shutil.copyfileobj(source, sink)
    return target


def installable_looking(repository: Repository, name: str) -> bool:
    """A version of ``name`` whose every requirement has a satisfier (one level deep)."""
    return any(
        all(any(repository.satisfiers(r) for r in clause) for clause in p.requirements())
        for p in repository.by_name[name]
    )


def debian_list(
    repository: Repository, seed: int, count: int, essentials: set[str]
) -> tuple[list[str], list[str]]:
    """``count`` real names in a seeded order; a member of an infeasible core (explain's
    QuickXplain) is replaced by the next name until the list has a solution."""
    order = sorted(repository.by_name)
    random.Random(f"debian-list:{seed}").shuffle(order)
    pool = iter(n for n in order if n not in essentials and installable_looking(repository, n))
    wanted = [next(pool) for _ in range(count)]
    notes: list[str] = []
    while not explain.feasible(repository, [solve.Wanted(name) for name in wanted]):
        core = explain.minimal_core(repository, [solve.Wanted(name) for name in wanted])
        if not core:
            raise SystemExit("the Essential set alone has no solution in the Debian corpus")
        dropped = core[-1].name
        wanted = [name for name in wanted if name != dropped] + [next(pool)]
        notes.append(f"replaced {dropped} (cannot be installed with {core[0].name})")
    return wanted, notes


# --- the engines -------------------------------------------------------------------------------


def run_highs(model: solve.Model, repeat: int, limit: float) -> Engine:
    runs = [solve.solve(model, "highs", time_limit=limit) for _ in range(repeat)]
    last = runs[-1]
    median = statistics.median(run.solve_s for run in runs)
    return Engine(
        "highs", last.status, median, last.objective, last.gap, len(last.packages), last.detail
    )


def run_glpk(model: solve.Model, limit: float, skip: str | None) -> Engine:
    if skip:
        return Engine("glpk", "skipped", None, None, None, 0, skip)
    found = solve.solve(model, "glpk", time_limit=limit)
    return Engine(
        "glpk",
        found.status,
        found.solve_s,
        found.objective,
        found.gap,
        len(found.packages),
        found.detail,
    )


def run_libsolv(problem: Problem, repeat: int) -> Libsolv | None:
    request = {
        "arch": problem.repository.arch,
        "files": [str(f) for f in problem.files],
        "wanted": problem.wanted + problem.essentials,
        "repeat": max(3, repeat),
    }
    answer = libsolv_call(request)
    if answer is None:
        return None
    keys = [tuple(key) for key in answer["packages"]]
    return Libsolv(
        answer["parse_s"],
        answer["solve_s"],
        answer["solvables"],
        len(keys),
        answer["problems"] + [f"no package {m}" for m in answer["missing"]],
        None,
        keys,
    )


def libsolv_call(request: dict[str, Any]) -> dict[str, Any] | None:
    run = subprocess.run(
        [SYSTEM_PYTHON, "-c", LIBSOLV_SCRIPT],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    if run.returncode:
        print(f"libsolv failed: {run.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(run.stdout)


def libsolv_available() -> str | None:
    """None if python3-solv imports in the system python, else why not."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} is missing"
    run = subprocess.run([SYSTEM_PYTHON, "-c", "import solv"], capture_output=True, text=True)
    return None if run.returncode == 0 else "python3-solv is not installed (apt-get install)"


def libsolv_cost(found: Libsolv, model: solve.Model) -> float | None:
    """libsolv's package set under the closure model's cost (its packages are all reachable,
    so all are variables of that model), for comparison with the optimum."""
    column = {package.key: number for number, package in enumerate(model.variables)}
    columns = [column.get(key) for key in found.keys]
    if not columns or None in columns:
        return None
    return float(sum(model.costs[c] for c in columns if c is not None))


def model_run(
    problem: Problem, model_kind: str, limit: float, repeat: int, glpk_skip: str | None
) -> tuple[ModelRun, solve.Model]:
    wanted = [solve.Wanted(name) for name in problem.wanted]
    model = solve.build_model(problem.repository, wanted, reduce=model_kind == "closure")
    highs = run_highs(model, repeat, limit)
    glpk = run_glpk(model, limit, glpk_skip)
    run = ModelRun(
        problem.label,
        model_kind,
        len(problem.repository.by_name),
        len(problem.repository),
        len(problem.wanted),
        len(model.variables),
        model.inequalities,
        model.build_s,
        highs,
        glpk,
    )
    return run, model


def measure(
    problem: Problem,
    limit: float,
    repeat: int,
    glpk_skip: dict[str, str | None],
    with_libsolv: bool,
) -> list[ModelRun]:
    """Closure and whole models of ``problem``, and libsolv on its list."""
    runs: list[ModelRun] = []
    for kind in ("closure", "whole"):
        run, model = model_run(problem, kind, limit, repeat, glpk_skip.get(kind))
        runs.append(run)
        if kind == "closure" and with_libsolv:
            problem.libsolv = run_libsolv(problem, repeat)
            if problem.libsolv is not None:
                problem.libsolv.objective = libsolv_cost(problem.libsolv, model)
        print(
            f"  measured {problem.label}, {kind}: HiGHS {fmt_s(run.highs.solve_s)}, "
            f"glpk {engine_time(run.glpk)}",
            file=sys.stderr,
            flush=True,
        )
    return runs


# --- printing ----------------------------------------------------------------------------------


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def fmt_ratio(top: float | None, bottom: float | None) -> str:
    if top is None or bottom is None or bottom <= 0:
        return "-"
    value = top / bottom
    return f"{value:.3f}" if value < 10 else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def engine_time(found: Engine) -> str:
    if found.status == "skipped":
        return "skipped"
    if found.status == "time-limit":
        return f"no proof in {found.solve_s:.0f} s"
    return fmt_s(found.solve_s) if found.status == "optimal" else found.status


def engine_objective(found: Engine) -> str:
    if found.objective is None:
        return "-"
    if found.status == "optimal":
        return f"{found.objective:,.0f}"
    gap = f", gap {found.gap:.1%}" if found.gap is not None else ""
    return f"{found.objective:,.0f} (incumbent{gap})"


def proven_ratio(found: Engine, anchor: float | None) -> str:
    """glpk's time over ``anchor``; a lower bound (">") when glpk did not finish."""
    if found.status == "time-limit" and found.solve_s and anchor:
        return f"> {fmt_ratio(found.solve_s, anchor)}"
    return fmt_ratio(found.solve_s, anchor) if found.status == "optimal" else "-"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def print_loading(problems: list[Problem], xz_check: str) -> None:
    rows = []
    for p in problems:
        solvables = p.libsolv.solvables if p.libsolv else "-"
        libsolv_parse = fmt_s(p.libsolv.parse_s) if p.libsolv else "-"
        rows.append(
            [
                p.label,
                f"{len(p.repository.by_name):,}",
                f"{len(p.repository):,}",
                fmt_s(p.load.get("generate_s")),
                fmt_s(p.load.get("parse_s")),
                fmt_s(p.load.get("cached_s")),
                libsolv_parse,
                solvables,
            ]
        )
    table(
        "Loading the repository (s)",
        [
            "problem",
            "names",
            "candidates",
            "generate s",
            "parse s",
            "cached load s",
            "libsolv parse s",
            "libsolv solvables",
        ],
        rows,
    )
    print(f"\n{xz_check}")


def print_models(runs: list[ModelRun]) -> None:
    rows = [
        [
            r.problem,
            r.model,
            f"{r.variables:,}",
            f"{r.inequalities:,}",
            fmt_s(r.model_s),
            r.highs.status,
            fmt_s(r.highs.solve_s),
            engine_objective(r.highs),
            f"{r.highs.packages:,}",
            engine_time(r.glpk),
            engine_objective(r.glpk),
            proven_ratio(r.glpk, r.highs.solve_s),
            fmt_ratio(r.highs.solve_s, PAPER_SOLVE_S),
            proven_ratio(r.glpk, PAPER_SOLVE_S),
        ]
        for r in runs
    ]
    table(
        "The ILP: HiGHS against glpk (the paper's engine), same model, same run",
        [
            "problem",
            "model",
            "variables",
            "inequalities",
            "model s",
            "HiGHS",
            "HiGHS s",
            "objective",
            "packages",
            "glpk s",
            "glpk objective",
            "glpk ÷ HiGHS",
            "HiGHS ÷ paper 10 s",
            "glpk ÷ paper 10 s",
        ],
        rows,
    )


def print_libsolv(problems: list[Problem], runs: list[ModelRun]) -> None:
    rows = []
    for problem in problems:
        closure = next(r for r in runs if r.problem == problem.label and r.model == "closure")
        rows.append(libsolv_row(problem, closure))
    table(
        "libsolv, the speed of light (not optimal), against the ILP's optimum (closure model)",
        [
            "problem",
            "libsolv s",
            "libsolv packages",
            "optimum packages",
            "libsolv extra",
            "libsolv cost over optimum",
            "HiGHS ÷ libsolv",
            "glpk ÷ libsolv",
            "problems",
        ],
        rows,
    )


def libsolv_row(problem: Problem, closure: ModelRun) -> list[Any]:
    found = problem.libsolv
    if found is None:
        return [
            problem.label,
            "not run",
            "-",
            f"{closure.highs.packages:,}",
            "-",
            "-",
            "-",
            "-",
            "-",
        ]
    extra = fmt_percent(found.packages, closure.highs.packages)
    cost = (
        fmt_percent(found.objective, closure.highs.objective, digits=2)
        if found.objective and closure.highs.objective
        else "-"
    )
    return [
        problem.label,
        fmt_s(found.solve_s),
        f"{found.packages:,}",
        f"{closure.highs.packages:,}",
        extra,
        cost,
        fmt_ratio(closure.highs.solve_s, found.solve_s),
        proven_ratio(closure.glpk, found.solve_s),
        "; ".join(found.problems) or "none",
    ]


def fmt_percent(value: float, reference: float, *, digits: int = 1) -> str:
    return f"{(value - reference) / reference:+.{digits}%}" if reference else "-"


def print_scaling(runs: list[tuple[str, ModelRun, Libsolv | None]]) -> None:
    rows = [
        [
            series,
            f"{r.names:,}",
            f"{r.wanted:,}",
            f"{r.candidates:,}",
            r.model,
            f"{r.variables:,}",
            f"{r.inequalities:,}",
            fmt_s(r.model_s),
            r.highs.status,
            fmt_s(r.highs.solve_s),
            engine_time(r.glpk),
            proven_ratio(r.glpk, r.highs.solve_s),
            fmt_s(found.solve_s) if found and r.model == "closure" else "-",
        ]
        for series, r, found in runs
    ]
    table(
        "Scaling (synthetic): repository size at 500 wanted, list size at 17,000 names",
        [
            "series",
            "names",
            "wanted",
            "candidates",
            "model",
            "variables",
            "inequalities",
            "model s",
            "HiGHS",
            "HiGHS s",
            "glpk s",
            "glpk ÷ HiGHS",
            "libsolv s",
        ],
        rows,
    )


def print_verdict(runs: list[ModelRun]) -> None:
    print("\n### Budget (DESIGN.md: paper-sized problem < 1 s, and faster than glpk)\n")
    for run in runs:
        if run.problem.startswith("(a)"):
            print(f"- {run.model} model: {verdict(run)}")


def verdict(run: ModelRun) -> str:
    highs, glpk = run.highs.solve_s, run.glpk
    if highs is None or run.highs.status != "optimal":
        return f"HiGHS {run.highs.status}: budget not met"
    fast = f"HiGHS {fmt_s(highs)} s {'<' if highs < BUDGET_S else '>='} {BUDGET_S:.0f} s"
    if glpk.status == "skipped":
        return f"{fast}; glpk not run ({glpk.detail})"
    beats = glpk.status == "time-limit" or (glpk.solve_s is not None and highs < glpk.solve_s)
    versus = "faster than" if beats else "NOT faster than"
    return f"{fast}; {versus} glpk ({engine_time(glpk)}){agreement(run)}"


def agreement(run: ModelRun) -> str:
    if run.glpk.status != "optimal" or run.highs.status != "optimal":
        return ""
    same = run.glpk.objective == run.highs.objective
    return "; objectives agree" if same else "; OBJECTIVES DIFFER"


# --- the run -----------------------------------------------------------------------------------


def xz_check(files: list[Path], compressed: list[Path]) -> str:
    """Does libsolv read the .xz files as it reads the decompressed ones?"""
    counts = []
    for paths in (compressed, files):
        answer = libsolv_call(
            {"arch": "amd64", "files": [str(p) for p in paths], "wanted": [], "repeat": 1}
        )
        counts.append(answer["solvables"] if answer else None)
    verdict = "same" if counts[0] == counts[1] else "DIFFERENT"
    return (
        f"libsolv reading the Debian .xz files directly: {counts[0]} solvables; "
        f"decompressed: {counts[1]} ({verdict}). The bench gives it the decompressed files."
    )


def scaling(
    first: Problem,
    synthetic: Synthetic,
    known: list[ModelRun],
    args: argparse.Namespace,
    work: Path,
    with_libsolv: bool,
) -> list[tuple[str, ModelRun, Libsolv | None]]:
    """Each size of each series; the main run's synthetic problem is reused, not re-measured.
    glpk is skipped for a model kind once it failed on a smaller instance of the series."""
    rows: list[tuple[str, ModelRun, Libsolv | None]] = []
    sizes = [("names", n, args.wanted) for n in SCALE_NAMES]
    sizes += [("wanted", args.names, w) for w in SCALE_WANTED]
    failed: dict[tuple[str, str], str] = {}
    for series, names, wanted in sizes:
        if (names, wanted) == (args.names, args.wanted):
            rows += [(series, run, first.libsolv) for run in known]
            continue
        problem = scaled_problem(synthetic, names, wanted, args.seed, work)
        skips = {kind: failed.get((series, kind)) for kind in ("closure", "whole")}
        for run in measure(problem, args.glpk_limit, args.repeat, skips, with_libsolv):
            rows.append((series, run, problem.libsolv))
            if run.glpk.status not in ("optimal", "skipped"):
                failed[(series, run.model)] = f"no proof at {run.wanted}/{run.names:,}"
    return rows


def scaled_problem(synthetic: Synthetic, names: int, wanted: int, seed: int, work: Path) -> Problem:
    if names == synthetic.stats.names:
        made, generate_s = synthetic.with_wanted(wanted), 0.0
    else:
        made, generate_s = timed(lambda: generate(seed, names=names, wanted=wanted))
    label = f"(a) synthetic {names:,}/{wanted:,}"
    return synthetic_problem(label, made, work, generate_s, measure_load=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    missing_libsolv = libsolv_available()
    if missing_libsolv:
        print(f"libsolv: not measured: {missing_libsolv}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="ucvm-bench-solver-") as work_dir:
        work = Path(work_dir)
        figures = run_all(args, work, missing_libsolv is None)
    figures["total_s"] = time.perf_counter() - started
    print(f"\nWhole run: {figures['total_s']:.0f} s.")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures saved to {args.json}")
    return 0


def run_all(args: argparse.Namespace, work: Path, with_libsolv: bool) -> dict[str, Any]:
    print(
        f"Solver benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}; paper: "
        f"{PAPER_AVAILABLE:,} packages, {PAPER_WANTED} wanted, {PAPER_INEQUALITIES:,} "
        f"inequalities, < {PAPER_SOLVE_S:.0f} s with glpk (constants). glpk time limit "
        f"{args.glpk_limit:.0f} s; HiGHS times are the median of {args.repeat}."
    )
    synthetic, generate_s = timed(lambda: generate(args.seed, names=args.names, wanted=args.wanted))
    problems = [
        synthetic_problem("(a) synthetic", synthetic, work, generate_s),
        debian_problem(args.seed, args.wanted, work),
    ]
    quick_skip = "--quick" if args.quick else None
    runs = [
        run
        for problem in problems
        for run in measure(
            problem, args.glpk_limit, args.repeat, {"whole": quick_skip}, with_libsolv
        )
    ]
    check = (
        xz_check(problems[1].files, debian.pinned_corpus())
        if with_libsolv
        else "libsolv not measured."
    )
    print_loading(problems, check)
    print_list_notes(problems)
    print_models(runs)
    print_libsolv(problems, runs)
    print_verdict(runs)
    known = [run for run in runs if run.problem == problems[0].label]
    scaled = [] if args.quick else scaling(problems[0], synthetic, known, args, work, with_libsolv)
    if scaled:
        print_scaling(scaled)
    return {
        "date": datetime.datetime.now().isoformat(),
        "args": vars(args),
        "paper": {
            "solve_s": PAPER_SOLVE_S,
            "available": PAPER_AVAILABLE,
            "wanted": PAPER_WANTED,
            "inequalities": PAPER_INEQUALITIES,
        },
        "synthetic_stats": synthetic.stats.as_dict(),
        "problems": [problem_figures(p) for p in problems],
        "models": [asdict(r) for r in runs],
        "scaling": [
            {"series": s, **asdict(r), "libsolv_s": f.solve_s if f else None} for s, r, f in scaled
        ],
    }


def print_list_notes(problems: list[Problem]) -> None:
    for problem in problems:
        print(
            f"\n{problem.label}: {len(problem.wanted)} wanted + {len(problem.essentials)} "
            f"Essential; list starts {', '.join(problem.wanted[:5])}, ..."
        )
        for note in problem.notes:
            print(f"- {note}")


def problem_figures(problem: Problem) -> dict[str, Any]:
    found = asdict(problem.libsolv) if problem.libsolv else None
    if found:
        found.pop("keys")
    return {
        "label": problem.label,
        "names": len(problem.repository.by_name),
        "candidates": len(problem.repository),
        "wanted": problem.wanted,
        "essentials": problem.essentials,
        "load": problem.load,
        "notes": problem.notes,
        "libsolv": found,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="no scaling, and glpk only on the closure models"
    )
    parser.add_argument("--seed", type=int, default=1, help="synthetic repository and lists")
    parser.add_argument("--names", type=int, default=PAPER_AVAILABLE)
    parser.add_argument("--wanted", type=int, default=PAPER_WANTED)
    parser.add_argument(
        "--glpk-limit",
        type=float,
        default=120.0,
        help="seconds; glpk (and HiGHS) give up after this",
    )
    parser.add_argument("--repeat", type=int, default=1, help="HiGHS solves per model (median)")
    parser.add_argument("--json", type=Path, help="save the figures here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
