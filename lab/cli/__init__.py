"""ucvm-lab: build | targets | run | up | down | report | gate | sweep | solve | diff | repo.

ucvm-lab build                 build the boot loader in every format, its other versions
                               (kernel and initramfs), and the OS releases of releases.yaml
                               (each cached by input hash)
ucvm-lab targets               every target, whether it can run here, and why not
ucvm-lab run [--targets a,b] [--shard K/N] [-n WORKERS] [--keep-failed]
                               run the suites over the matrix, then write the report
                               (--keep-failed: failed cells' instances stay, listed)
ucvm-lab up TARGET [--version V] [--user-data FILE] [--channel C]
                               boot one cell's instance by hand, streaming its console,
                               until Ctrl-C or `ucvm-lab down RUN` (lab/cli/up.py)
ucvm-lab down RUN              destroy what run RUN (an `up`, a kept run) made
ucvm-lab report [DIR ...]      support table + Allure HTML from allure-results dirs (CI shards)
ucvm-lab gate [DIR ...]        the release verdict from the gate policy; exit 1 when it fails
ucvm-lab history [CELL] [--runs] [--json]
                               what changed since the previous run of the matrix, a cell's
                               runs (kvm/newest/boot), the runs; `run`, `report` and ./test
                               record into it (reports/history.sqlite, or UCVM_HISTORY_URL)
ucvm-lab sweep                 remove what dead runs left (domains, files); what is not
                               a run of this lab is left alone and listed
ucvm-lab solve LIST --index F [--index F ...] -o DIR [--engine highs|glpk]
                               shopping list -> closed package list + cernvm-system .deb
ucvm-lab diff OLD.json NEW.json  what changed between two closed lists
ucvm-lab repo init | publish IMAGE --tag T --branch B [--loader V] | tag EXISTING NEW
         | publish-loader VERSION --kernel K --initrd I | branch NAME TAG
         | list [--verify] [--json] | serve [--port P]     (each takes --repo DIR)
                               the signed OS repository (default: UCVM_REPO)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table

from lab import matrix, proc
from lab.artifacts import ArtifactStore, file_digest, input_key
from lab.build import bootloader, rootfs
from lab.build.kernel import KernelError
from lab.build.osrepo.keys import default_key_path
from lab.build.releases import ReleaseError, load_releases
from lab.cli.common import REPO, error_exit, number_above, os_problem, out, output_dir_problem
from lab.cli.gate import add_gate_options, add_release_commands, cmd_gate_candidate
from lab.cli.history import add_history_command, begin_run, record_results, trend_series
from lab.cli.repo import add_repo_commands
from lab.cli.up import add_up_commands, list_kept
from lab.evidence import REBASE_CHECK
from lab.packages import closed_list, debian, explain, index, solve
from lab.packages.model import Repository, dpkg_compare
from lab.report import publish
from lab.report.allure_html import executor_from_env
from lab.run import Run, new_run_id
from lab.runroot import RunRootError
from lab.services.sweep import sweep as sweep_services
from lab.targets.base import TargetError
from lab.targets.libvirt import sweep
from lab.targets.profiles import PROFILES
from lab.targets.registry import load_matrix, make_target


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
    build_loader_versions(loader)
    return build_releases()


def build_loader_versions(image_loader: bootloader.BootLoader) -> None:
    """Every loader version of LOADER_VERSIONS (the others: a kernel and an initramfs only),
    as the repository publishes them."""
    built = Table(title="boot loader versions (the repository publishes each)")
    for column in ("loader", "kernel bytes", "initrd bytes", "initrd sha256", "disk images"):
        built.add_column(column)
    for version in bootloader.LOADER_VERSIONS:
        loader = (
            image_loader
            if version == image_loader.version
            else bootloader.build(loader_version=version)
        )
        parts = loader.manifest
        images = parts["images"]
        built.add_row(
            version,
            f"{parts['vmlinuz_bytes']:,}",
            f"{parts['initrd_bytes']:,}",
            parts["initrd_sha256"][:16],
            f"{len(images)} formats" if images else "none: staged on scratch, kexec'd into",
        )
    out.print(built)


def build_releases() -> int:
    """Every OS release of releases.yaml: closed list -> root -> squashfs (cached)."""
    try:
        releases = load_releases(REPO / "releases.yaml")
    except ReleaseError as error:
        print(f"ucvm-lab build: {error}", file=sys.stderr)
        return 2
    built = Table(title="OS releases (releases.yaml)")
    for column in ("tag", "branch", "loader", "packages", "snapshot bytes", "built in"):
        built.add_column(column)
    for release in releases:
        started = time.perf_counter()
        artifact = rootfs.build_release(release)
        built.add_row(
            artifact.tag,
            artifact.branch,
            release.loader,
            artifact.record.get("packages", "?"),
            f"{artifact.squashfs.stat().st_size:,}",
            f"{time.perf_counter() - started:.1f} s",
        )
    out.print(built)
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


def shard_spec(text: str) -> tuple[int, int]:
    """argparse's type for --shard: `K/N`, whole numbers with 1 <= K <= N."""
    k, slash, n = text.strip().partition("/")
    if not (slash and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected K/N, two whole numbers with 1 <= K <= N (e.g. 2/4)"
        )
    return int(k), int(n)


def worker_count(text: str) -> str:
    """argparse's type for -n: a whole number of pytest-xdist workers (>= 1), or `auto`."""
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1, or auto")


seconds = number_above(0, "a number of seconds", "120")
"""argparse's type for a time limit: a finite number of seconds > 0."""


def shard_targets(names: list[str], shard: tuple[int, int]) -> list[str]:
    """The K-th of N slices of ``names`` (every N-th, from the K-th); may be empty."""
    k, n = shard
    return [name for i, name in enumerate(names) if i % n == k - 1]


def chosen_targets(args: argparse.Namespace, lab: matrix.Matrix) -> list[str] | None:
    """--targets (checked against the matrix), then sliced by --shard; None: every target."""
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    if args.targets and not names:  # `--targets ,` or UCVM_TARGETS=" ": not "every target"
        raise matrix.MatrixError(f"{args.targets!r} names no target; give a,b or leave it unset")
    lab.cells(names)  # MatrixError naming the unknown ones and the known
    if args.shard is None:
        return names or None
    return shard_targets([t.name for t in lab.targets if not names or t.name in names], args.shard)


def cmd_run(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    results = lab.settings.reports / "allure-results"
    try:
        chosen = chosen_targets(args, lab)
    except matrix.MatrixError as error:
        return error_exit("run", f"--targets / UCVM_TARGETS: {error}", 2)
    if chosen == []:
        k, n = args.shard
        out.print(f"shard {k}/{n} of these {len(lab.targets)} targets is empty: nothing to run")
        return 0
    command = [
        sys.executable, "-m", "pytest", str(REPO / "suites"), "-p", "no:cacheprovider",
        f"--matrix={lab.path}", f"--alluredir={results}", "--clean-alluredir",
        "-n", str(args.workers), "--dist", "loadgroup",
    ]  # fmt: skip
    if chosen:
        command.append("--targets=" + ",".join(chosen))
    if args.keep_failed:
        command.append("--keep-failed")
    out.print(f"[bold]ucvm-lab run[/]: {' '.join(command[3:])}")
    started = begin_run("nightly", run_id=new_run_id())  # the host before the guests start
    # not proc.run: pytest's output streams live to the user's terminal, it is not captured
    tests = subprocess.run(command, cwd=REPO, env=os.environ | {"UCVM_RUN_ID": started.run_id})
    report = write_report([results], lab, started.run_id, trend=True)  # failed cells: a report
    if args.keep_failed:
        list_kept(lab.settings.run_root, started.run_id)
    recorded = record_results("run", [results], lab, started)  # after: the report is safe
    return tests.returncode or report or recorded


def write_report(
    results_dirs: list[Path], lab: matrix.Matrix, run_id: str | None = None, *, trend: bool = False
) -> int:
    """The support table, its plots and the Allure report of ``results_dirs`` (of run
    ``run_id``, else a report of its own), into the matrix's reports."""
    try:
        paths = publish.write_report(
            results_dirs,
            lab.settings.reports,
            versions=lab.versions,
            known_issues_path=lab.gate.known_issues,
            planned=[(t.name, PROFILES[t.profile].platform, t.evidence) for t in lab.targets],
            planned_rebase=[
                (t.name, PROFILES[t.profile].platform, t.evidence, source, dest)
                for t, source, dest in rebase_cells(lab)
            ],
            environment=report_environment(lab),
            executor=executor_from_env(os.environ, run_id or new_run_id()),
            history=lab.settings.reports / publish.ALLURE_HISTORY,
            trends=trend_series(lab, results_dirs, run_id or "") if trend else None,
        )
    except publish.REPORT_ERRORS as error:
        out.print(f"[red]ucvm-lab report: {error}[/]")
        return 1
    drawn = [plot.name for plot in paths.plots if plot.drawn]
    out.print(
        f"support table: {paths.markdown}\n               {paths.html}\n"
        f"plots:         {', '.join(drawn) or 'none (no data)'} in {paths.markdown.parent}/plots\n"
        f"Allure report: {paths.allure}"
    )
    for note in paths.notes:
        out.print(f"[yellow]ucvm-lab report: {note}[/]")
    return 0


def report_environment(lab: matrix.Matrix) -> dict[str, str]:
    """Allure's Environment panel: this host, its tools, the boot loader and the matrix
    (the report puts in the accelerators the results name instead of the one asked for)."""
    packages = proc.package_versions("qemu-system-x86", "libvirt-daemon")
    return {
        "host": socket.gethostname(),
        "CPUs": str(os.cpu_count() or "?"),
        "accelerator": f"{lab.settings.accel} (matrix.yaml; no result names one)",
        "QEMU": packages.get("qemu-system-x86", "not installed"),
        "libvirt": packages.get("libvirt-daemon", "not installed"),
        "host kernel": os.uname().release,
        **loader_facts(),
        "matrix": f"{lab.path.name}, sha256 {file_digest(lab.path)[:16]}",
    }


class BuiltOnly(ArtifactStore):
    """The artifact store as it is: ``get`` finds what is built and builds nothing."""

    def get(self, kind: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> Path:
        found = self.root / f"{kind}-{input_key(inputs)}"
        if not (found / "inputs.json").exists():
            raise LookupError(f"no {kind} is built for today's inputs")
        return found


def loader_facts() -> dict[str, str]:
    """The kernel package and hashes of the boot loader today's inputs make, when it is built
    (a run's guests booted it); nothing is built or fetched for a report."""
    if not default_key_path().exists():  # bootloader.build would make the key
        return {"boot loader": "not built here"}
    try:
        loader = bootloader.build(store=BuiltOnly())
        manifest = loader.manifest
        kernel = manifest["kernel"]
    except (LookupError, KernelError, proc.CommandError, OSError, ValueError) as error:
        return {"boot loader": f"not built here ({error})"}
    return {
        "kernel package": f"{kernel['package']} {kernel['version']}",
        "boot loader": f"{loader.version}, sha256 kernel {manifest['vmlinuz_sha256'][:16]} "
        f"initrd {manifest['initrd_sha256'][:16]}",
    }


def rebase_cells(lab: matrix.Matrix) -> list[tuple[matrix.Target, str, str]]:
    """The rebase cells suites/rebase runs: (target, FROM, TO) per target the check covers."""
    check = lab.checks.get(REBASE_CHECK)
    if check is None:
        return []
    return [
        (target, source, dest)
        for target in lab.targets
        if check.covers_target(target.name)
        for source, dest in check.pairs
    ]


def results_dirs(args: argparse.Namespace, lab: matrix.Matrix) -> list[Path]:
    return [Path(d) for d in args.dirs] or [lab.settings.reports / "allure-results"]


def cmd_report(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    dirs = results_dirs(args, lab)
    report = write_report(dirs, lab)
    recorded = record_results("report", dirs, lab, begin_run("report", timed=False))
    return report or recorded


def cmd_gate(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    if args.candidate:
        return cmd_gate_candidate(args, lab)
    try:
        verdict = publish.judge(
            results_dirs(args, lab),
            known_issues_path=lab.gate.known_issues,
            required_tiers=lab.gate.required_tiers,
            allow_known_issues=lab.gate.allow_known_issues,
            planned=[(cell.target.name, cell.version, cell.target.tier) for cell in lab.cells()],
            planned_rebase=[
                (target.name, source, dest, target.tier)
                for target, source, dest in rebase_cells(lab)
            ],
        )
    except publish.REPORT_ERRORS as error:
        out.print(f"[red]ucvm-lab gate: {error}[/]")
        return 1
    out.print(str(verdict))
    return 0 if verdict.passed else 1


def cmd_sweep(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    try:
        removed = sweep_services(lab.settings.run_root)  # before their run dirs go
        removed += sweep(lab.settings.libvirt_uri, lab.settings.run_root)
    except RunRootError as error:  # matrix.load refused it already; this is the second check
        return error_exit("sweep", f"{error}; nothing was swept", 2)
    removed += sweep_remote(lab)
    out.print("\n".join(removed) or "nothing to sweep", highlight=False)
    return 0


def sweep_remote(lab: matrix.Matrix) -> list[str]:
    """What dead runs left on the remote targets that can be reached (credentials given)."""
    removed = []
    for spec in lab.targets:
        if spec.driver == "libvirt":
            continue
        remote = make_target(spec, lab.settings, Run(new_run_id(), lab.settings.run_root))
        try:
            reachable, _ = remote.available()
            if reachable:
                removed += [f"{spec.name}: {item}" for item in remote.sweep(lab.settings.run_root)]
        except TargetError as error:
            out.print(f"[yellow]sweep of {spec.name} skipped: {error}[/]")
    return removed


def cmd_solve(args: argparse.Namespace, lab: matrix.Matrix | None) -> int:
    started = time.perf_counter()
    out_dir = Path(args.output)
    if problem := output_dir_problem(out_dir, create=False):  # before the slow index read
        return error_exit("solve", problem, 2)
    try:
        repository = debian.load_cached([Path(p) for p in args.index])
        load_s = time.perf_counter() - started
        wanted = solve.read_shopping_list(Path(args.shopping_list), repository)
    except (index.IndexFormatError, solve.ShoppingListError) as error:
        return error_exit("solve", str(error), 2)
    except OSError as error:  # the artifact store that caches the parsed index
        return error_exit("solve", f"{os_problem(error)}; check UCVM_CACHE is writable", 1)
    if problem := output_dir_problem(out_dir):  # made only for a list that was accepted
        return error_exit("solve", problem, 2)
    try:
        return solve_into(args, repository, wanted, out_dir, load_s)
    except OSError as error:
        return error_exit("solve", f"{os_problem(error)}; the results are incomplete", 1)


def solve_into(
    args: argparse.Namespace,
    repository: Repository,
    wanted: list[solve.Wanted],
    out_dir: Path,
    load_s: float,
) -> int:
    model = solve.build_model(repository, wanted)
    solution = solve.solve(model, args.engine, time_limit=args.time_limit)
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
    wanted: list[solve.Wanted],
    solution: solve.Solution,
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
    try:
        old, new = closed_list.read_json(Path(args.old)), closed_list.read_json(Path(args.new))
    except closed_list.ClosedListError as error:
        return error_exit("diff", str(error), 2)
    change = closed_list.diff(old, new, dpkg_compare)
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
    run.add_argument(
        "--targets", default=os.environ.get("UCVM_TARGETS", ""), help="a,b: only these targets"
    )
    run.add_argument(
        "--shard",
        type=shard_spec,
        help="K/N: run the K-th of N slices of the targets (of --targets, if given; CI fan-out); "
        "an empty slice runs nothing",
    )
    run.add_argument(
        "-n", "--workers", type=worker_count, default="2", help="pytest-xdist workers (default 2)"
    )
    run.add_argument(
        "--keep-failed",
        action="store_true",
        default=os.environ.get("UCVM_KEEP_FAILED", "") not in ("", "0"),
        help="keep failed cells' instances running and list them (`ucvm-lab down RUN` ends them)",
    )
    run.set_defaults(func=cmd_run)
    for name, func in (("report", cmd_report), ("gate", cmd_gate)):
        command = commands.add_parser(name)
        command.add_argument(
            "dirs", nargs="*", help="allure-results directories (default: the run's)"
        )
        command.set_defaults(func=func)
        if name == "gate":
            add_gate_options(command)
    commands.add_parser("sweep").set_defaults(func=cmd_sweep)
    solving = commands.add_parser("solve", help="shopping list -> closed package list")
    solving.add_argument("shopping_list")
    solving.add_argument(
        "--index",
        action="append",
        required=True,
        help="a Packages index (plain, .gz or .xz); repeat to merge several",
    )
    solving.add_argument("-o", "--output", required=True, help="directory for the results")
    solving.add_argument("--engine", choices=solve.ENGINES, default="highs")
    solving.add_argument("--time-limit", type=seconds, default=120.0, help="seconds (default 120)")
    solving.add_argument(
        "--version",
        default="1.0",
        type=meta_version,
        help="version of the cernvm-system package (a Debian version)",
    )
    solving.set_defaults(func=cmd_solve, needs_matrix=False)
    change = commands.add_parser("diff", help="compare two closed lists (closed-list.json)")
    change.add_argument("old")
    change.add_argument("new")
    change.set_defaults(func=cmd_diff, needs_matrix=False)
    add_repo_commands(commands)
    add_release_commands(commands)
    add_up_commands(commands)
    add_history_command(commands)
    return main


def meta_version(text: str) -> str:
    """argparse's check of solve --version (build_meta_package checks it again)."""
    if problem := closed_list.meta_version_problem(text):
        raise argparse.ArgumentTypeError(problem)
    return text


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
