"""pytest plugin of ucvm-lab: reads matrix.yaml once, parametrises suites/ over its cells,
and provides the session's run, boot loader and targets.

Options (also environment variables, like cloud-init's integration settings):
  --matrix PATH     the matrix (UCVM_MATRIX; default: matrix.yaml beside this file)
  --targets a,b     only these targets (UCVM_TARGETS; default: every target)
  --versions a,b    only these of the matrix's OS versions (UCVM_VERSIONS; default: all)
  --releases a,b    publish only these releases of releases.yaml (UCVM_RELEASES; default: all)
  --keep-failed     keep the instances of failed cells running, with their repository server
                    (UCVM_KEEP_FAILED=1; `ucvm-lab run --keep-failed`): suites/conftest.py;
                    `ucvm-lab down RUN` or `ucvm-lab sweep` removes them
  --gate candidate=TAG,baseline=TAG
                    a gate run (UCVM_GATE; `ucvm-lab gate --candidate` sets it): every cell
                    runs for both sides instead of the matrix's versions, boot cells
                    --gate-boots times each (UCVM_GATE_BOOTS; default: matrix.yaml's
                    gate.min_boots), interleaved; a rebase cell runs baseline -> candidate
  --checks a,b      only the cells of these checks of matrix.yaml (UCVM_CHECKS; default: all)
  --repo DIR        serve this OS repository as it is (UCVM_GATE_REPO) instead of publishing
                    releases.yaml into the run's own
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import matrix
from lab.build import bootloader, rootfs
from lab.build.osrepo import lab_repo
from lab.build.osrepo.repository import Repository
from lab.build.releases import ReleaseError, load_releases
from lab.evidence import BOOT_CHECK, SIDES
from lab.packages import debian
from lab.run import Run, new_run_id
from lab.services.repo import RepoServer
from lab.targets import reach
from lab.targets.base import Target
from lab.targets.profiles import PROFILES
from lab.targets.registry import load_matrix, make_target

HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ucvm-lab")
    group.addoption("--matrix", default=os.environ.get("UCVM_MATRIX", str(HERE / "matrix.yaml")))
    group.addoption(
        "--targets",
        default=os.environ.get("UCVM_TARGETS", ""),
        help="comma-separated target names (default: all in matrix.yaml)",
    )
    group.addoption(
        "--versions",
        default=os.environ.get("UCVM_VERSIONS", ""),
        help="comma-separated OS versions of matrix.yaml to boot (default: all)",
    )
    group.addoption(
        "--gate", default=os.environ.get("UCVM_GATE", ""), help="candidate=TAG,baseline=TAG"
    )
    group.addoption("--gate-boots", default=os.environ.get("UCVM_GATE_BOOTS", ""))
    group.addoption("--repo", default=os.environ.get("UCVM_GATE_REPO", ""))
    group.addoption("--checks", default=os.environ.get("UCVM_CHECKS", ""))
    group.addoption(
        "--keep-failed",
        action="store_true",
        default=os.environ.get("UCVM_KEEP_FAILED", "") not in ("", "0"),
        help="keep the instances of failed cells running (UCVM_KEEP_FAILED=1)",
    )
    group.addoption(
        "--releases",
        default=os.environ.get("UCVM_RELEASES", ""),
        help="comma-separated release tags of releases.yaml to publish (default: all)",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.ucvm_matrix = load_matrix(Path(config.getoption("--matrix")))  # type: ignore[attr-defined]
    except matrix.MatrixError as error:
        raise pytest.UsageError(f"invalid matrix:\n{error}") from None
    worker_input = getattr(config, "workerinput", None)
    config.ucvm_run_id = (  # type: ignore[attr-defined]
        worker_input["ucvm_run_id"]
        if worker_input
        else os.environ.get("UCVM_RUN_ID") or new_run_id()
    )


def pytest_configure_node(node) -> None:  # xdist: every worker joins the controller's run
    node.workerinput["ucvm_run_id"] = node.config.ucvm_run_id


def listed(config: pytest.Config, option: str) -> list[str]:
    return [name for name in config.getoption(option).split(",") if name]


def selected_cells(config: pytest.Config) -> list[matrix.Cell]:
    only = listed(config, "--targets")
    versions = listed(config, "--versions")
    try:
        cells = config.ucvm_matrix.cells(only or None)  # type: ignore[attr-defined]
    except matrix.MatrixError as error:
        raise pytest.UsageError(str(error)) from None
    unknown = set(versions) - {cell.version for cell in cells}
    if unknown:
        raise pytest.UsageError(
            f"--versions / UCVM_VERSIONS names {', '.join(sorted(unknown))}, which matrix.yaml's "
            "`versions:` does not list; pick among them"
        )
    return [cell for cell in cells if not versions or cell.version in versions]


def gate_sides(config: pytest.Config) -> dict[str, str]:
    """--gate's sides, {"candidate": TAG, "baseline": TAG}; {} outside a gate run."""
    text = config.getoption("--gate")
    if not text:
        return {}
    sides = dict(part.partition("=")[::2] for part in text.split(","))
    if sorted(sides) != sorted(SIDES) or not all(sides.values()):
        raise pytest.UsageError(f"--gate / UCVM_GATE {text!r}: expected candidate=TAG,baseline=TAG")
    return sides


def gate_boots(config: pytest.Config) -> int:
    text = config.getoption("--gate-boots")
    if not text:
        return int(config.ucvm_matrix.gate.min_boots)  # type: ignore[attr-defined]
    if not text.isdigit() or int(text) < 1:
        raise pytest.UsageError(f"--gate-boots / UCVM_GATE_BOOTS {text!r}: expected 1, 2, ...")
    return int(text)


def gate_cells(
    config: pytest.Config, cells: list[matrix.Cell], check: str | None
) -> list[matrix.Cell]:
    """A gate run's cells: each target of ``cells`` for both sides, boot cells --gate-boots
    rounds each, round by round (baseline, candidate, baseline, ...) so load hits both."""
    sides = gate_sides(config)
    rounds = gate_boots(config) if check == BOOT_CHECK else 1
    targets = list(dict.fromkeys(cell.target for cell in cells))
    return [
        matrix.Cell(target, sides[side], side=side, round=n)
        for n in range(rounds)
        for target in targets
        for side in reversed(SIDES)  # baseline first
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell" in metafunc.fixturenames:
        cells = selected_cells(metafunc.config)
        sides = gate_sides(metafunc.config)
        check = metafunc.definition.get_closest_marker("check")
        known = metafunc.config.ucvm_matrix.checks  # type: ignore[attr-defined]
        chosen = known.get(check.args[0]) if check else None
        if chosen:  # a check may cover only some versions and targets
            cells = [
                c for c in cells if chosen.covers(c.version) and chosen.covers_target(c.target.name)
            ]
        if sides and "rebase_from" in metafunc.fixturenames:  # the update a VM will do
            targets = dict.fromkeys(c.target for c in cells)
            metafunc.parametrize(
                "cell,rebase_from",
                [
                    pytest.param(
                        matrix.Cell(t, sides["candidate"], side="candidate"),
                        sides["baseline"],
                        id=f"{t.name}-{sides['baseline']}-to-{sides['candidate']}",
                        marks=host_group(matrix.Cell(t, sides["candidate"])),
                    )
                    for t in targets
                ],
            )
            return
        if sides:
            cells = gate_cells(metafunc.config, cells, check.args[0] if check else None)
        if "rebase_from" in metafunc.fixturenames:  # a cell per (target, from -> version)
            metafunc.parametrize(
                "cell,rebase_from",
                [
                    pytest.param(c, source, id=f"{c.target.name}-{source}-to-{c.version}",
                                 marks=[*host_group(c), *nightly_only(chosen, c)])
                    for c in cells
                    for source in (chosen.sources_of(c.version) if chosen else ())
                ],
            )  # fmt: skip
            return
        if "channel" in metafunc.fixturenames:  # a cell per (target, version, channel)
            metafunc.parametrize(
                "cell,channel",
                [
                    pytest.param(c, channel, id=f"{c.id}-{channel}", marks=host_group(c))
                    for c in cells
                    for channel in PROFILES[c.target.profile].channels
                ],
            )
            return
        metafunc.parametrize("cell", [pytest.param(c, id=c.id, marks=host_group(c)) for c in cells])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--checks: keep the cells of those checks (a test without a check marker is no cell)."""
    checks = listed(config, "--checks")
    if not checks:
        return
    known = config.ucvm_matrix.checks  # type: ignore[attr-defined]
    unknown = sorted(set(checks) - set(known))
    if unknown:
        raise pytest.UsageError(
            f"--checks / UCVM_CHECKS names {', '.join(unknown)}, not a check of matrix.yaml "
            f"({', '.join(known)})"
        )
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("check")
        (kept if marker and marker.args[0] in checks else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def nightly_only(check: matrix.Check | None, cell: matrix.Cell) -> list[pytest.MarkDecorator]:
    """A cell outside the check's quick_targets is the nightly's (the default run skips it)."""
    return [pytest.mark.nightly] if check and check.nightly_only(cell.target.name) else []


def host_group(cell: matrix.Cell) -> list[pytest.MarkDecorator]:
    """Cells of one remote host go to one xdist worker (`--dist loadgroup`), so a host runs one
    guest at a time; local cells spread over the workers (-n sets how many guests run here)."""
    uri = cell.target.settings.get("uri")
    return [pytest.mark.xdist_group(uri)] if uri else []


@pytest.fixture(scope="session")
def corpus_files() -> list[Path]:
    """The pinned Debian 12 indexes (../shared/data/solver), or a failure that says so."""
    try:
        return debian.pinned_corpus()
    except FileNotFoundError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def lab_matrix(pytestconfig: pytest.Config) -> matrix.Matrix:
    return pytestconfig.ucvm_matrix  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def lab_run(pytestconfig: pytest.Config, lab_matrix: matrix.Matrix) -> Iterator[Run]:
    run = Run(pytestconfig.ucvm_run_id, lab_matrix.settings.run_root).hold()  # type: ignore[attr-defined]
    yield run
    run.release(keep=bool(reach.kept(run.dir)))  # --keep-failed kept instances: the sweep's


@pytest.fixture(scope="session")
def boot_loader() -> bootloader.BootLoader:
    """Built once per input hash; xdist workers share it under the artifact store's lock."""
    return bootloader.build()


@pytest.fixture(scope="session")
def os_releases(pytestconfig: pytest.Config) -> list[rootfs.ReleaseArtifact]:
    """The OS releases of releases.yaml (or those --releases names), built once per input hash."""
    try:
        releases = load_releases(HERE / "releases.yaml")
    except ReleaseError as error:
        raise pytest.UsageError(str(error)) from None
    only = listed(pytestconfig, "--releases")
    unknown = set(only) - {release.tag for release in releases}
    if unknown:
        raise pytest.UsageError(
            f"--releases / UCVM_RELEASES names {', '.join(sorted(unknown))}, not in releases.yaml"
        )
    return [rootfs.build_release(r) for r in releases if not only or r.tag in only]


@pytest.fixture(scope="session")
def boot_loaders(boot_loader: bootloader.BootLoader) -> dict[str, bootloader.BootLoader]:
    """Every loader version the repository publishes (lab.build.osrepo.lab_repo)."""
    return lab_repo.loader_builds(boot_loader)


@pytest.fixture(scope="session")
def os_repo(request: pytest.FixtureRequest, lab_run: Run) -> Repository:
    """This run's OS repository: every loader version, then every release with the loader it
    wants, in releases.yaml's order (lab.build.osrepo.lab_repo; `ucvm-lab up` makes the same).
    Workers of one run share it; the first publishes, the others find it there. With --repo
    (a gate run), that repository as it is: it holds the candidate and the baseline."""
    given = request.config.getoption("--repo")
    if given:
        repository = Repository(Path(given))
        if not repository.manifest_path.is_file():
            raise pytest.UsageError(f"--repo / UCVM_GATE_REPO {given}: no repository there")
        return repository
    releases = load_releases(HERE / "releases.yaml")
    built: list[rootfs.ReleaseArtifact] = request.getfixturevalue("os_releases")
    loaders: dict[str, bootloader.BootLoader] = request.getfixturevalue("boot_loaders")
    return lab_repo.publish_run_repository(lab_run.dir, releases, built, loaders)


@pytest.fixture(scope="session")
def repo_server(
    os_repo: Repository, lab_run: Run, pytestconfig: pytest.Config
) -> Iterator[RepoServer]:
    """The repository served by nginx on 127.0.0.1 (one server per worker, its own log).
    With --keep-failed it outlives the session when an instance of this worker is kept."""
    keeping = bool(pytestconfig.getoption("--keep-failed"))
    server = RepoServer(os_repo.root, lab_run.dir / f"nginx-{os.getpid()}", outlive=keeping)
    yield server.start()
    if not getattr(pytestconfig, "ucvm_kept", None):  # suites/conftest.py's keep_failed
        server.stop()  # else it serves the kept instances until `down RUN` or `sweep`


@pytest.fixture(scope="session")
def lab_targets(lab_matrix: matrix.Matrix, lab_run: Run) -> dict[str, Target]:
    return {
        spec.name: make_target(spec, lab_matrix.settings, lab_run) for spec in lab_matrix.targets
    }


@pytest.fixture
def target(cell: matrix.Cell, lab_targets: dict[str, Target]) -> Target:
    """The cell's target, or a skip saying why it cannot run here (the table shows `?`)."""
    chosen = lab_targets[cell.target.name]
    ok, why = chosen.available()
    if not ok:
        pytest.skip(f"{cell.target.name}: {why}")
    return chosen
