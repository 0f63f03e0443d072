"""ucvm-lab: build | targets | run | report | gate | sweep | solve | diff.

ucvm-lab build                 build the boot loader in every format (cached by input hash)
ucvm-lab targets               every target, whether it can run here, and why not
ucvm-lab run [--targets a,b] [--shard K/N] [-n WORKERS]
                               run the suites over the matrix, then write the report
ucvm-lab report [DIR ...]      support table + Allure HTML from allure-results dirs (CI shards)
ucvm-lab gate [DIR ...]        the release verdict from the gate policy; exit 1 when it fails
ucvm-lab sweep                 remove what dead runs left (domains, files)
ucvm-lab solve LIST --index F [--index F ...] -o DIR [--engine highs|glpk]
                               shopping list -> closed package list + cernvm-system .deb
ucvm-lab diff OLD.json NEW.json  what changed between two closed lists
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lab import matrix
from lab.build import bootloader, closed_list, explain, index, solver
from lab.build.artifacts import file_digest
from lab.build.packages import Repository, dpkg_compare
from lab.report import allure_html, gate, known_issues, table
from lab.targets.base import TargetError
from lab.targets.libvirt import sweep
from lab.targets.profiles import PROFILES
from lab.targets.registry import load_matrix, make_target
from lab.targets.run import Run, new_run_id

REPO = Path(__file__).resolve().parent.parent
out = Console(width=None if sys.stdout.isatty() else 200)


def cmd_build(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    loader = bootloader.build()
    manifest = loader.manifest
    budget_mb = lab.checks["image_size"].budget_mb or 12
    sizes = Table(title=f"boot loader {manifest['loader_version']} in {loader.root}")
    for column in ("format", "file", "bytes", "gzip'd", f"vs {budget_mb:g} MB"):
        sizes.add_column(column)
    for fmt, image in manifest["images"].items():
        sizes.add_row(
            fmt,
            image["file"],
            f"{image['bytes']:,}",
            f"{image['gzip_bytes']:,}",
            f"{image['gzip_bytes'] / (budget_mb * 1e6):.2f}",
        )
    out.print(sizes)
    out.print(
        f"kernel {manifest['kernel']['package']} {manifest['kernel']['version']}, "
        f"{manifest['modules']['count']} modules ({manifest['modules']['bytes'] / 1e6:.1f} MB)"
    )
    return 0


def cmd_targets(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    run = Run(new_run_id(), lab.settings.run_root)
    listing = Table(title=f"targets in {lab.path}")
    for column in ("target", "driver", "profile", "platform", "tier", "evidence", "here?", "why"):
        listing.add_column(column)
    for spec in lab.targets:
        try:
            ok, why = make_target(spec, lab.settings, run).available()
        except TargetError as error:
            ok, why = False, f"fault: {error}"
        listing.add_row(
            spec.name,
            spec.driver,
            spec.profile,
            PROFILES[spec.profile].platform,
            str(spec.tier),
            spec.evidence,
            "yes" if ok else "no",
            why,
        )
    out.print(listing)
    return 0


def shard_targets(lab: matrix.Matrix, shard: str) -> list[str]:
    index, _, count = shard.partition("/")
    k, n = int(index), int(count)
    if not 1 <= k <= n:
        raise SystemExit(f"--shard {shard}: expected K/N with 1 <= K <= N")
    return [t.name for i, t in enumerate(lab.targets) if i % n == k - 1]


def cmd_run(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    results = lab.settings.reports / "allure-results"
    chosen = args.targets.split(",") if args.targets else []
    if args.shard:
        chosen = shard_targets(lab, args.shard)
    command = [
        sys.executable, "-m", "pytest", str(REPO / "suites"), "-p", "no:cacheprovider",
        f"--matrix={lab.path}", f"--alluredir={results}", "--clean-alluredir",
        "-n", str(args.workers), "--dist", "loadgroup",
    ]  # fmt: skip
    if chosen:
        command.append("--targets=" + ",".join(chosen))
    out.print(f"[bold]ucvm-lab run[/]: {' '.join(command[3:])}")
    tests = subprocess.run(command, cwd=REPO, env=os.environ | {"UCVM_RUN_ID": new_run_id()})
    return tests.returncode or write_report([results], lab)


REPORT_ERRORS = (table.ResultsError, known_issues.KnownIssuesError, allure_html.AllureError)


def write_report(results_dirs: list[Path], lab: matrix.Matrix) -> int:
    reports = lab.settings.reports
    reports.mkdir(parents=True, exist_ok=True)
    try:
        results = table.read_results(results_dirs)
        issues = known_issues.load_known_issues(lab.gate.known_issues)
        planned = [(t.name, PROFILES[t.profile].platform, t.evidence) for t in lab.targets]
        support = table.build_table(
            results, versions=lab.versions, known_issues=issues, planned=planned,
            sources=results_dirs,
        )  # fmt: skip
        markdown, html = table.write_table(support, reports)
        report = allure_html.generate_html(results_dirs, reports / "allure-report")
    except REPORT_ERRORS as error:
        out.print(f"[red]ucvm-lab report: {error}[/]")
        return 1
    out.print(f"support table: {markdown}\n               {html}\nAllure report: {report}")
    return 0


def results_dirs(args: argparse.Namespace, lab: matrix.Matrix) -> list[Path]:
    return [Path(d) for d in args.dirs] or [lab.settings.reports / "allure-results"]


def cmd_report(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    return write_report(results_dirs(args, lab), lab)


def cmd_gate(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    try:
        results = table.read_results(results_dirs(args, lab))
        issues = known_issues.load_known_issues(lab.gate.known_issues)
    except REPORT_ERRORS as error:
        out.print(f"[red]ucvm-lab gate: {error}[/]")
        return 1
    verdict = gate.verdict(
        [r for r in results if r.check == "boot"],
        required_tiers=lab.gate.required_tiers,
        allow_known_issues=lab.gate.allow_known_issues,
        known_issues=issues,
        planned=[(cell.target.name, cell.version, cell.target.tier) for cell in lab.cells()],
    )
    out.print(str(verdict))
    return 0 if verdict.passed else 1


def cmd_sweep(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    removed = sweep(lab.settings.libvirt_uri, lab.settings.run_root)
    out.print("\n".join(removed) or "nothing to sweep")
    return 0


def cmd_solve(args: argparse.Namespace, lab: matrix.Matrix | None) -> int:
    started = time.perf_counter()
    try:
        repository = index.load_cached([Path(p) for p in args.index])
        load_s = time.perf_counter() - started
        wanted = solver.read_shopping_list(Path(args.shopping_list), repository)
    except (index.IndexFormatError, solver.ShoppingListError, OSError) as error:
        print(f"ucvm-lab solve: {error}", file=sys.stderr)
        return 2
    model = solver.build_model(repository, wanted)
    solution = solver.solve(model, args.engine, time_limit=args.time_limit)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    out.print(
        f"{len(repository):,} candidates, {len(wanted)} wanted; model: "
        + ", ".join(f"{k} {v:,}" for k, v in model.counts().items())
    )
    out.print(
        f"load index {load_s:.3f} s, model {model.build_s:.3f} s, "
        f"solve {solution.solve_s:.3f} s ({solution.engine})"
    )
    if solution.status == "infeasible":
        lines = explain.explain(repository, wanted)
        (out_dir / "explanation.txt").write_text("\n".join(lines) + "\n")
        out.print("[red]no solution[/]\n" + "\n".join(lines), markup=True, highlight=False)
        return 1
    if not solution.optimal:
        out.print(f"[red]{args.engine}: {solution.status} ({solution.detail})[/]")
        return 1
    return write_solution(args, repository, wanted, solution, out_dir)


def write_solution(
    args: argparse.Namespace,
    repository: Repository,
    wanted: list[solver.Wanted],
    solution: solver.Solution,
    out_dir: Path,
) -> int:
    packages = solution.packages
    problems = closed_list.closure_problems(repository, packages, wanted)
    dose = closed_list.dose_distcheck(packages)
    provenance = {
        "shopping_list": str(args.shopping_list),
        "indexes": [{"path": p, "sha256": file_digest(Path(p))} for p in args.index],
        "engine": solution.engine, "objective": solution.objective, "gap": solution.gap,
    }  # fmt: skip
    closed_list.write_text(packages, out_dir / "closed-list.txt")
    closed_list.write_json(packages, out_dir / "closed-list.json", **provenance)
    deb = closed_list.build_meta_package(packages, out_dir, version=args.version)
    out.print(
        f"optimal, objective {solution.objective:g}, gap {solution.gap or 0:.2%}; "
        f"{len(packages)} packages\n"
        f"own closure check: {'ok' if not problems else '; '.join(problems[:5])}\n"
        f"dose-distcheck: {dose.broken} of {dose.total} broken\n"
        f"wrote {out_dir / 'closed-list.txt'}, closed-list.json, {deb.name}",
        highlight=False,
    )
    return 0 if not problems and dose.ok else 1


def cmd_diff(args: argparse.Namespace, lab: matrix.Matrix | None) -> int:
    change = closed_list.diff(
        closed_list.read_json(Path(args.old)),
        closed_list.read_json(Path(args.new)),
        dpkg_compare,
    )
    out.print("\n".join(change.lines()) or "no change", highlight=False)
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="ucvm-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    main.add_argument(
        "--matrix", type=Path, default=Path(os.environ.get("UCVM_MATRIX", "matrix.yaml"))
    )
    commands = main.add_subparsers(dest="command", required=True)
    commands.add_parser("build").set_defaults(func=cmd_build)
    commands.add_parser("targets").set_defaults(func=cmd_targets)
    run = commands.add_parser("run")
    run.add_argument("--targets", default=os.environ.get("UCVM_TARGETS", ""))
    run.add_argument("--shard", help="K/N: run the K-th of N slices of the targets (CI fan-out)")
    run.add_argument("-n", "--workers", default="2", help="pytest-xdist workers (default 2)")
    run.set_defaults(func=cmd_run)
    for name, func in (("report", cmd_report), ("gate", cmd_gate)):
        command = commands.add_parser(name)
        command.add_argument(
            "dirs", nargs="*", help="allure-results directories (default: the run's)"
        )
        command.set_defaults(func=func)
    commands.add_parser("sweep").set_defaults(func=cmd_sweep)
    solve = commands.add_parser("solve", help="shopping list -> closed package list")
    solve.add_argument("shopping_list")
    solve.add_argument(
        "--index",
        action="append",
        required=True,
        help="a Packages index (plain, .gz or .xz); repeat to merge several",
    )
    solve.add_argument("-o", "--output", required=True, help="directory for the results")
    solve.add_argument("--engine", choices=solver.ENGINES, default="highs")
    solve.add_argument("--time-limit", type=float, default=120.0)
    solve.add_argument("--version", default="1.0", help="version of the cernvm-system package")
    solve.set_defaults(func=cmd_solve, needs_matrix=False)
    change = commands.add_parser("diff", help="compare two closed lists (closed-list.json)")
    change.add_argument("old")
    change.add_argument("new")
    change.set_defaults(func=cmd_diff, needs_matrix=False)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not getattr(args, "needs_matrix", True):
        return args.func(args, None)
    try:
        lab = load_matrix(args.matrix)
    except matrix.MatrixError as error:
        print(f"ucvm-lab: invalid matrix\n{error}", file=sys.stderr)
        return 2
    return args.func(args, lab)


if __name__ == "__main__":
    sys.exit(main())
