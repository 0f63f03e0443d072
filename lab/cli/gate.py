"""``ucvm-lab release candidate|promote`` and ``ucvm-lab gate --candidate``: a release is gated
against the last one in one run, and only a passing verdict promotes it.

- ``release candidate TAG [--branch testing]`` builds releases.yaml's TAG and publishes it, with
  every boot loader version, into the store's OS repository on the candidate branch
  (matrix.yaml ``gate.candidate_branch``); the baseline branch is never touched.
- ``gate --candidate TAG [--baseline TAG]`` runs every cell of the required tiers for the
  candidate and the baseline (default: the head of ``gate.baseline_branch``, which must have
  been promoted there) side by side, reruns once what failed or was incomplete, judges the two
  (lab/report/compare.py) and writes the verdict to ``REPO/verdicts/TAG.json``. The old verdict
  goes first: a run killed mid-way leaves none.
- ``release promote TAG --to BRANCH`` moves the branch only with a passing verdict for exactly
  that candidate: its snapshot, boot loader image and matrix file. ``--force`` promotes without
  one; the manifest's promotion record says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lab import matrix
from lab.build import bootloader, rootfs
from lab.build.osrepo import repository as osrepo
from lab.build.osrepo.files import write_atomic
from lab.build.osrepo.keys import RepoError
from lab.build.osrepo.lab_repo import loader_builds
from lab.build.osrepo.manifest import FORCED, Manifest
from lab.build.releases import ReleaseError, load_releases
from lab.cli.common import REPO, error_exit, out
from lab.evidence import ResultsError, read_results
from lab.known_issues import KnownIssuesError, load_known_issues
from lab.report import compare, plots
from lab.run import new_run_id
from lab.services.sweep import sweep as sweep_services
from lab.targets.base import TargetError
from lab.targets.libvirt import sweep

VERDICTS = "verdicts"
RESULTS = "gate-allure-results"
SUITES = ("suites/boot", "suites/rebase")
NOT_GATED = "suites/boot/test_image_size.py"  # the image's bytes are a figure of its own


class GateInputError(Exception):
    """Bad input to the gate or a release command: nothing was run (exit 3)."""


@dataclass(frozen=True)
class Identity:
    """What a verdict is for: the candidate's snapshot, the boot loader image, the matrix."""

    snapshot: str
    loader: str
    matrix: str


def add_release_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    release = commands.add_parser("release", help="publish a candidate; promote a gated one")
    steps = release.add_subparsers(dest="release_command", required=True)
    candidate = steps.add_parser("candidate", help="build releases.yaml's TAG, publish it")
    candidate.add_argument("tag")
    candidate.add_argument("--branch", help="default: matrix.yaml gate.candidate_branch")
    promote = steps.add_parser("promote", help="move a branch to a gated candidate")
    promote.add_argument("tag")
    promote.add_argument("--to", required=True, dest="branch", help="the branch, e.g. prod")
    promote.add_argument("--force", action="store_true", help="without a passing verdict")
    for step in (candidate, promote):
        step.add_argument("--repo", default=os.environ.get("UCVM_REPO", ""))
    candidate.set_defaults(func=cmd_release_candidate)
    promote.set_defaults(func=cmd_release_promote)


def add_gate_options(gate: argparse.ArgumentParser) -> None:
    gate.add_argument("--candidate", help="gate this tag against the baseline: run both")
    gate.add_argument("--baseline", help="default: the head of gate.baseline_branch")
    gate.add_argument("--boots", type=int, help="boots per side and cell (gate.min_boots)")
    gate.add_argument("--targets", default=os.environ.get("UCVM_TARGETS", ""))
    gate.add_argument("--checks", default="", help="a,b: only these checks (default: all)")
    gate.add_argument(
        "--no-run", action="store_true", help="judge the last gate run's results again (waivers)"
    )
    gate.add_argument("-n", "--workers", default="2", help="pytest-xdist workers (default 2)")
    gate.add_argument("--repo", default=os.environ.get("UCVM_REPO", ""))


# --------------------------------------------------------------------------- release


def store_repository(args: argparse.Namespace) -> osrepo.Repository:
    return osrepo.Repository(Path(args.repo) if args.repo else osrepo.default_repo_path())


def cmd_release_candidate(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    branch = args.branch or lab.gate.candidate_branch
    if branch == lab.gate.baseline_branch:
        return error_exit(
            "release candidate",
            f"--branch {branch} is the baseline branch (gate.baseline_branch): a candidate is "
            f"published beside it; promote it there with `ucvm-lab release promote`",
            3,
        )
    try:
        releases = load_releases(REPO / "releases.yaml")
    except ReleaseError as error:
        return error_exit("release candidate", str(error), 3)
    release = next((r for r in releases if r.tag == args.tag), None)
    if release is None:
        tags = ", ".join(r.tag for r in releases)
        return error_exit(
            "release candidate", f"{args.tag} is not in releases.yaml (its tags: {tags})", 3
        )
    repo = store_repository(args)
    try:
        if not repo.exists():
            repo.init("ucvm-lab", default_branch=lab.gate.baseline_branch)
        for version, loader in loader_builds(bootloader.build()).items():
            repo.publish_loader(version, loader.vmlinuz, loader.initrd)
        artifact = rootfs.build_release(release)
        snapshot = repo.publish(artifact.squashfs, release.tag, branch, loader=release.loader)
    except RepoError as error:
        return error_exit("release candidate", str(error), 2)
    out.print(
        f"candidate {snapshot.tag} on branch {branch} of {repo.root} (snapshot "
        f"{snapshot.image_sha256[:12]}, loader {release.loader}); gate it with "
        f"`ucvm-lab gate --candidate {snapshot.tag}`",
        highlight=False,
    )
    return 0


def cmd_release_promote(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    repo = store_repository(args)
    try:
        manifest = repo.manifest()
        snapshot = manifest.snapshot(args.tag)
        if snapshot is None:
            raise GateInputError(f"{args.tag} is not a tag of {repo.root} ({_tags(manifest)})")
        evidence = FORCED if args.force else verdict_evidence(repo, args.tag, lab)
        promotion = repo.promote(args.branch, args.tag, evidence)
    except GateInputError as error:
        return error_exit("release promote", f"{error}; nothing was promoted", 1)
    except RepoError as error:
        return error_exit("release promote", str(error), 2)
    how = "forced, without a verdict" if promotion.forced else f"verdict {evidence[:12]}"
    out.print(f"{args.branch} is now {args.tag} ({how})", highlight=False)
    return 0


def verdict_path(repo: osrepo.Repository, tag: str) -> Path:
    return repo.root / VERDICTS / f"{tag}.json"


def verdict_evidence(repo: osrepo.Repository, tag: str, lab: matrix.Matrix) -> str:
    """The sha256 of the passing verdict for exactly this candidate, or GateInputError why not."""
    path = verdict_path(repo, tag)
    try:
        data = path.read_bytes()
        verdict = json.loads(data)
    except FileNotFoundError:
        raise GateInputError(
            f"no gate verdict for {tag} ({path}): run `ucvm-lab gate --candidate {tag}` first"
        ) from None
    except (OSError, ValueError) as error:
        raise GateInputError(f"{path}: unreadable verdict: {error}") from None
    if not isinstance(verdict, dict) or not verdict.get("passed"):
        failures = verdict.get("failures") if isinstance(verdict, dict) else None
        first = f": {failures[0]}" if failures else ""
        raise GateInputError(f"the gate verdict for {tag} did not pass ({path}){first}")
    stale = [
        f"{what} {verdict.get('identity', {}).get(what, '?')[:12]} != now {now[:12]}"
        for what, now in vars(identity_now(repo, tag, lab)).items()
        if verdict.get("identity", {}).get(what) != now
    ]
    if stale:
        raise GateInputError(
            f"the gate verdict for {tag} is for another {', '.join(stale)} ({path}): gate it again"
        )
    return hashlib.sha256(data).hexdigest()


def identity_now(repo: osrepo.Repository, tag: str, lab: matrix.Matrix) -> Identity:
    snapshot = repo.manifest().snapshot(tag)
    image = bootloader.build().manifest["images"]["raw"]
    return Identity(
        snapshot=snapshot.image_sha256 if snapshot else "",
        loader=str(image["sha256"]),
        matrix=hashlib.sha256(lab.path.read_bytes()).hexdigest(),
    )


def _tags(manifest: Manifest) -> str:
    return "its tags: " + (", ".join(manifest.tags()) or "none")


# --------------------------------------------------------------------------- the gate run


def cmd_gate_candidate(args: argparse.Namespace, lab: matrix.Matrix) -> int:
    try:
        repo, baseline, targets = gate_inputs(args, lab)
    except GateInputError as error:
        return error_exit("gate", f"{error}; nothing was run", compare.BAD_INPUT)
    verdict = verdict_path(repo, args.candidate)
    verdict.unlink(missing_ok=True)  # a run killed mid-way leaves no verdict
    results = lab.settings.reports / RESULTS
    boots = args.boots or lab.gate.min_boots
    environment = os.environ | {
        "UCVM_GATE": f"candidate={args.candidate},baseline={baseline}",
        "UCVM_GATE_BOOTS": str(boots),
        "UCVM_GATE_REPO": str(repo.root),
        "UCVM_RUN_ID": new_run_id(),
    }
    command = [
        sys.executable, "-m", "pytest", *(str(REPO / s) for s in SUITES), "-p", "no:cacheprovider",
        f"--matrix={lab.path}", f"--alluredir={results}", "-m", "not nightly",
        f"--deselect={NOT_GATED}", f"--targets={','.join(targets)}",
        *([f"--checks={args.checks}"] if args.checks else []),
        "-n", str(args.workers), "--dist", "loadgroup",
    ]  # fmt: skip
    out.print(
        f"[bold]ucvm-lab gate[/]: candidate {args.candidate} against baseline {baseline}, "
        f"{boots} boot(s) per side, on {', '.join(targets)}"
    )
    if not args.no_run:
        run_both_sides(command, environment, results, lab)
    try:
        comparison = judge(lab, repo, args.candidate, baseline, results, boots)
    except (ResultsError, KnownIssuesError) as error:
        return error_exit("gate", str(error), compare.INCOMPLETE)
    out.print("\n".join(comparison.lines()), highlight=False)
    identity = identity_now(repo, args.candidate, lab)
    data = json.loads(comparison.to_json()) | {"identity": vars(identity)}
    verdict.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(verdict, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
    out.print(f"verdict: {verdict}", highlight=False)
    plot = plots.comparison_plot(comparison.figures, lab.settings.reports / "plots")
    out.print(f"plot: {plot.svg if not plot.missing else plot.missing}", highlight=False)
    return comparison.exit_code


def run_both_sides(
    command: list[str], environment: dict[str, str], results: Path, lab: matrix.Matrix
) -> None:
    """The run, then once more what failed or was incomplete (openQA reruns incompletes);
    after each, what a dead libvirtd kept of them is swept."""
    subprocess.run([*command, "--clean-alluredir"], cwd=REPO, env=environment)
    leftovers(lab)
    retry = rerun_ids(results)
    if retry:
        out.print(f"rerunning {len(retry)} failed or incomplete cell(s) once: {', '.join(retry)}")
        subprocess.run([*command, *retry], cwd=REPO, env=environment)
        leftovers(lab)


def leftovers(lab: matrix.Matrix) -> None:
    """Sweep what no live run owns (the runs above have ended): an infrastructure failure can
    leave a domain definition libvirtd kept while its instance was destroyed without it."""
    try:
        removed = sweep_services(lab.settings.run_root) + sweep(
            lab.settings.libvirt_uri, lab.settings.run_root
        )
    except TargetError as error:  # libvirtd is down for good: say so, judge what ran
        out.print(f"[yellow]gate: could not sweep: {error}[/]")
        return
    if removed:
        out.print("swept: " + "; ".join(removed), highlight=False)


def gate_inputs(
    args: argparse.Namespace, lab: matrix.Matrix
) -> tuple[osrepo.Repository, str, list[str]]:
    """The repository, the baseline's tag and the targets; GateInputError names what is wrong."""
    repo = store_repository(args)
    if not repo.exists():
        raise GateInputError(
            f"no OS repository at {repo.root}: publish the candidate with "
            f"`ucvm-lab release candidate {args.candidate}`"
        )
    manifest = repo.manifest()
    if manifest.snapshot(args.candidate) is None:
        raise GateInputError(f"candidate {args.candidate} is not published ({_tags(manifest)})")
    branch = lab.gate.baseline_branch
    baseline = args.baseline or manifest.branches.get(branch)
    if baseline is None:
        raise GateInputError(
            f"branch {branch} (gate.baseline_branch) has no release yet: promote the first "
            f"one with `ucvm-lab release promote TAG --to {branch} --force`, or name --baseline"
        )
    if manifest.snapshot(baseline) is None:
        raise GateInputError(f"baseline {baseline} is not published ({_tags(manifest)})")
    if baseline == args.candidate:
        raise GateInputError(f"{baseline} is both the candidate and the baseline")
    if not manifest.promotions_of(baseline) and not _passed(verdict_path(repo, baseline)):
        raise GateInputError(
            f"baseline {baseline} was never gated (no promotion of it, no passing verdict): "
            "name a promoted one with --baseline"
        )
    if args.boots is not None and args.boots < 1:
        raise GateInputError(f"--boots {args.boots}: expected 1 or more")
    targets = [t.name for t in lab.targets if t.tier in lab.gate.required_tiers]
    wanted = [name for name in args.targets.split(",") if name]
    unknown = sorted(set(wanted) - set(targets))
    if unknown:
        raise GateInputError(
            f"--targets {', '.join(unknown)}: not a target of the required tier(s) "
            f"{lab.gate.required_tiers} (those: {', '.join(targets)})"
        )
    return repo, baseline, wanted or targets


def _passed(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("passed"))
    except (OSError, ValueError, AttributeError):
        return False


def rerun_ids(results: Path) -> list[str]:
    """The node ids of the gate cells whose last attempt failed or was incomplete."""
    if not results.is_dir():
        return []
    latest: dict[tuple[object, ...], object] = {}
    ids: dict[tuple[object, ...], str] = {}
    for result in sorted(read_results([results]), key=lambda r: r.stop):
        if result.side and result.test_id:
            latest[result.rerun_key] = result.failed
            ids[result.rerun_key] = result.test_id
    return sorted({ids[key] for key, failed in latest.items() if failed})


def judge(
    lab: matrix.Matrix,
    repo: osrepo.Repository,
    candidate: str,
    baseline: str,
    results: Path,
    boots: int,
) -> compare.Comparison:
    manifest = repo.manifest()
    sides = {}
    for name, tag in (("candidate", candidate), ("baseline", baseline)):
        snapshot = manifest.snapshot(tag)
        assert snapshot is not None, "gate_inputs checked that both sides are published"
        sides[name] = compare.Side(tag, snapshot.image_sha256, snapshot.loader or "")
    image = bootloader.build().manifest["images"]["raw"]
    image_bytes = float(image["gzip_bytes"])  # one boot loader image for both sides
    tags = {name: side.tag for name, side in sides.items()}
    of_this_gate = [  # a results directory of another candidate's gate says nothing of this one
        r for r in (read_results([results]) if results.is_dir() else [])
        if r.side and tags[r.side] == r.version
    ]  # fmt: skip
    comparison = compare.compare(
        of_this_gate,
        candidate=sides["candidate"],
        baseline=sides["baseline"],
        policy=compare.Policy(
            lab.gate.required_tiers,
            boots,
            lab.gate.max_ratio,
            lab.gate.flaky_is_pass,
        ),
        known_issues=load_known_issues(lab.gate.known_issues),
        extra_figures={side: {"image_bytes": image_bytes} for side in sides},
    )
    comparison.notes.append(
        "both sides boot the one boot loader image of this checkout (a loader candidate is not "
        "gated yet)"
    )
    return comparison
