"""The run root and the sweeper: the lab deletes only run directories it made, under a root
it may use. Real directories, real owners and modes; nothing is mocked."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from lab import runroot
from lab.matrix import MatrixError
from lab.run import MARKER, Run, dead_run_dirs, new_run_id, run_dir_problem, sweep_files
from lab.runroot import RunRootError
from lab.targets import registry
from tests.commands import ucvm_lab

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --------------------------------------------------------------------------- the path itself


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("", "expected an absolute path"),
        ("runs", "expected an absolute path; found 'runs'"),
        ("/", "/ is the filesystem root"),
        ("/home", "/home is a home directory"),
        ("/root", "/root is a home directory"),
        ("/root/", "/root is a home directory"),
        ("/var/tmp/../../home", "/home is a home directory"),
        (str(REPO), f"{REPO} is the lab's checkout"),
        (str(REPO / "runs"), f"{REPO / 'runs'} is inside the lab's checkout {REPO}"),
        (str(REPO.parent), f"{REPO.parent} holds the lab's checkout {REPO}"),
        ("/tmp", "/tmp is the shared directory /tmp itself"),
        ("/var/tmp", "/var/tmp is the shared directory /var/tmp itself"),
        ("/var", "/var holds a system directory /var/lib"),
        ("/etc/ucvm", "/etc/ucvm is inside a system directory /etc"),
        ("/usr/local/ucvm", "/usr/local/ucvm is inside a system directory /usr"),
        ("/lib64/ucvm", "is inside the system directory /lib64"),
        ("/var/lib/ucvm-lab", "is inside a system directory /var/lib"),
    ],
)
def test_a_run_root_that_could_hold_more_than_runs_is_refused(root: str, expected: str) -> None:
    if "shared directory" in expected and REPO.is_relative_to(root):  # a checkout in /tmp (CI)
        expected = f"{root} holds the lab's checkout {REPO}"  # is refused for that first
    found = runroot.problem(root)

    assert found is not None and expected in found, found


def test_every_accounts_home_is_refused() -> None:
    homes = {Path(os.path.expanduser("~"))} | {p for p in Path("/home").glob("*") if p.is_dir()}
    for home in homes:
        assert "is a home directory" in (runroot.problem(home) or ""), home


def test_a_symlink_on_the_way_cannot_lead_into_a_refused_place(tmp_path: Path) -> None:
    (tmp_path / "etc").symlink_to("/etc")

    found = runroot.problem(tmp_path / "etc" / "ucvm")

    assert found and "(really /etc/ucvm) is inside a system directory /etc" in found


@pytest.mark.parametrize("root", ["/var/tmp/ucvm-lab", "/tmp/ucvm", "/srv-not/ucvm"])
def test_a_directory_of_its_own_is_accepted(root: str) -> None:
    assert runroot.path_problem(root) is None


# --------------------------------------------------------------------------- what is there


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def test_a_world_writable_root_is_refused_with_the_fix(root: Path) -> None:
    root.mkdir(mode=0o777)
    root.chmod(0o777)

    found = runroot.problem(root)

    assert found and "has mode 0777" in found and runroot.fix(root) in found
    assert f"chown root: {root} && chmod 0711 {root}" in found


def test_a_root_owned_by_another_user_is_refused_with_the_fix(root: Path) -> None:
    root.mkdir(mode=0o711)
    os.chown(root, NOBODY, NOBODY)

    found = runroot.problem(root)

    assert found and f"is owned by uid {NOBODY}" in found and runroot.fix(root) in found


def test_a_symlinked_root_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o711)
    root.symlink_to(tmp_path / "real")

    with pytest.raises(RunRootError, match="is a symbolic link"):
        runroot.make_root(root)


def test_a_missing_root_is_created_0711_whatever_the_umask(root: Path) -> None:
    old = os.umask(0o077)
    try:
        runroot.make_root(root)
    finally:
        os.umask(old)

    assert mode(root) == 0o711 and root.lstat().st_uid == os.geteuid()
    assert runroot.problem(root) is None


@pytest.mark.parametrize("allowed", [0o711, 0o700])
def test_an_existing_private_root_is_accepted(root: Path, allowed: int) -> None:
    root.mkdir()
    root.chmod(allowed)

    assert runroot.problem(root) is None


# --------------------------------------------------------------------------- the matrix edge


def lab_matrix(tmp_path: Path, run_root: str) -> Path:
    text = (REPO / "matrix.yaml").read_text()
    path = tmp_path / "matrix.yaml"
    path.write_text(re.sub(r"(?m)^(\s+run_root:).*$", rf"\1 {run_root}", text, count=1))
    shutil.copy(REPO / "known-issues.yaml", tmp_path)
    return path


def run_root_line() -> int:
    lines = (REPO / "matrix.yaml").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.strip().startswith("run_root:"))


@pytest.mark.parametrize("kind", ["0777", "nobody's"])
def test_the_matrix_refuses_an_unsafe_existing_root_at_its_line(tmp_path: Path, kind: str) -> None:
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    if kind == "0777":
        unsafe.chmod(0o777)
    else:
        unsafe.chmod(0o711)
        os.chown(unsafe, NOBODY, NOBODY)

    with pytest.raises(MatrixError) as caught:
        registry.load_matrix(lab_matrix(tmp_path, str(unsafe)), env={})

    (problem,) = caught.value.problems
    assert problem.startswith(f"{tmp_path / 'matrix.yaml'}:{run_root_line()}:")
    assert ": settings.run_root: " in problem and runroot.fix(unsafe) in problem


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"UCVM_RUN_ROOT": ""}, "UCVM_RUN_ROOT is set but empty"),
        ({"UCVM_RUN_ROOT": "/"}, "UCVM_RUN_ROOT='/' (overrides settings.run_root): / is the"),
        ({"UCVM_RUN_ROOT": "/home"}, "/home is a home directory"),
        ({"UCVM_RUN_ROOT": str(REPO)}, f"{REPO} is the lab's checkout"),
    ],
)
def test_the_matrix_refuses_an_unsafe_override(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(MatrixError) as caught:
        registry.load_matrix(lab_matrix(tmp_path, "/var/tmp/ucvm-lab"), env=env)

    (problem,) = caught.value.problems
    assert expected in problem, problem


# --------------------------------------------------------------------------- runs and the sweeper


def test_a_held_run_is_private_and_marked(root: Path) -> None:
    run = Run(new_run_id(), root).hold()

    marker = json.loads((run.dir / MARKER).read_text())
    assert marker == {"lab": "ucvm-lab", "run": run.id, "uid": os.geteuid()}
    assert (mode(root), mode(run.dir), mode(run.dir / MARKER)) == (0o711, 0o711, 0o600)
    assert run_dir_problem(run.dir) is None
    second_worker = Run(run.id, root).hold()  # xdist: every worker of the run holds it
    run.release()
    assert run.dir.exists()
    second_worker.release()
    assert not run.dir.exists()


def test_a_run_id_the_sweeper_would_not_recognise_is_refused(root: Path) -> None:
    with pytest.raises(RunRootError, match="expected 10 digits and 4 hex digits"):
        Run(new_run_id() + "x", root).hold()
    assert not root.exists()


def test_a_run_is_not_held_in_a_directory_someone_else_marked(root: Path) -> None:
    run_id = new_run_id()
    runroot.make_root(root)
    (root / run_id).mkdir()
    (root / run_id / MARKER).write_text(json.dumps({"lab": "ucvm-lab", "run": "0", "uid": 0}))

    with pytest.raises(RunRootError, match="not a run directory this lab made"):
        Run(run_id, root).hold()
    assert not (root / run_id / ".alive").exists()


def dead_run(root: Path) -> Run:
    run = Run(new_run_id(), root).hold()
    assert run._lock is not None
    run._lock.close()  # the process died: nobody holds the lock, the files stay
    return run


def foreign_entries(root: Path) -> dict[str, Path]:
    """What a careless run_root shares a folder with, beside the lab's runs."""
    run_id = new_run_id()
    entries = {
        "someone's data": root / "data",
        "a run id without a marker": root / "0101000000beef",
        "a marker for another run": root / "0101000000cafe",
        "a marker naming another owner": root / "0101000000f00d",
        "a marker that is not JSON": root / "0101000000abcd",
        "a marker that is a symlink": root / "0101000000dcba",
        "a symlink to a marked run": root / run_id,
        "a file named like a run": root / "0101000000aaaa",
    }
    for name in ("data", "0101000000beef", "0101000000cafe", "0101000000f00d", "0101000000abcd"):
        (root / name).mkdir()
        (root / name / "precious").write_text("keep me")
    (root / "0101000000cafe" / MARKER).write_text(
        json.dumps({"lab": "ucvm-lab", "run": "0101000000babe", "uid": os.geteuid()})
    )
    (root / "0101000000f00d" / MARKER).write_text(
        json.dumps({"lab": "ucvm-lab", "run": "0101000000f00d", "uid": NOBODY})
    )
    (root / "0101000000abcd" / MARKER).write_text("{not json")
    elsewhere = dead_run(root.parent / "elsewhere")
    (root / "0101000000dcba").mkdir()
    (root / "0101000000dcba" / MARKER).symlink_to(elsewhere.dir / MARKER)
    (root / run_id).symlink_to(elsewhere.dir)
    (root / "0101000000aaaa").write_text("keep me")
    return entries


def test_the_sweeper_removes_a_dead_run_and_leaves_everything_else(root: Path) -> None:
    live = Run(new_run_id(), root).hold()
    dead = dead_run(root)
    foreign = foreign_entries(root)
    before = {
        path: sorted(p.name for p in path.iterdir())
        for path in root.iterdir()
        if path.is_dir() and not path.is_symlink()
    }

    lines = sweep_files(root)

    assert f"files {dead.dir}" in lines and not dead.dir.exists()
    assert live.dir.exists() and run_dir_problem(live.dir) is None
    for what, path in foreign.items():
        assert os.path.lexists(path), what
        assert any(
            line.startswith(f"left alone: {path}: not a ucvm-lab run directory") for line in lines
        ), (what, lines)
    assert len(lines) == 1 + len(foreign)  # the live run is neither removed nor reported
    for path, names in before.items():
        if path != dead.dir:
            assert sorted(p.name for p in path.iterdir()) == names, path  # nothing added either
    assert (root.parent / "elsewhere").exists() and (root / "data" / "precious").exists()
    live.release()


def test_a_dead_run_dir_is_found_only_with_its_marker(root: Path) -> None:
    dead = dead_run(root)
    (dead.dir / MARKER).unlink()

    assert dead_run_dirs(root) == []
    assert sweep_files(root) == [
        f"left alone: {dead.dir}: not a ucvm-lab run directory (it has no {MARKER} marker)"
    ]
    assert dead.dir.exists()


def test_the_sweeper_refuses_a_root_it_must_not_use(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    victim = dead_run(tmp_path / "runs")
    shutil.move(victim.dir, shared / victim.id)  # even a perfect run dir is left there

    with pytest.raises(RunRootError, match="has mode 0777"):
        sweep_files(shared)
    with pytest.raises(RunRootError, match="is the filesystem root"):
        sweep_files(Path("/"))
    assert (shared / victim.id).exists()


# --------------------------------------------------------------------------- the command


def test_sweep_with_an_empty_run_root_variable_deletes_nothing(tmp_path: Path) -> None:
    """An empty run root was the working directory: here a scratch one, not the checkout."""
    matrix = lab_matrix(tmp_path, "/var/tmp/ucvm-lab")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "precious.py").write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())

    result = ucvm_lab(
        "--matrix", str(matrix), "sweep", env=os.environ | {"UCVM_RUN_ROOT": ""}, cwd=tmp_path
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert "UCVM_RUN_ROOT is set but empty" in result.stderr
    assert "unset UCVM_RUN_ROOT" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "lab" / "precious.py").read_text() == "keep me"


@pytest.mark.parametrize("run_root", ["/", "/home"])
def test_sweep_with_an_unsafe_run_root_in_the_matrix_is_refused(
    tmp_path: Path, run_root: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "UCVM_RUN_ROOT"}
    result = ucvm_lab("--matrix", str(lab_matrix(tmp_path, run_root)), "sweep", env=env)

    assert result.returncode == 2
    assert f":{run_root_line()}:13: settings.run_root: {run_root} is " in result.stderr


def test_sweep_reports_what_it_leaves_alone(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    dead = dead_run(root)
    (root / "notes").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "UCVM_RUN_ROOT"}

    result = ucvm_lab("--matrix", str(lab_matrix(tmp_path, str(root))), "sweep", env=env)

    assert result.returncode == 0, result.stderr
    assert f"files {dead.dir}" in result.stdout
    assert f"left alone: {root / 'notes'}: not a ucvm-lab run directory" in result.stdout
    assert (root / "notes").is_dir() and not dead.dir.exists()


def test_a_run_does_not_adopt_a_link_named_like_it(root: Path, tmp_path: Path) -> None:
    """A link in the root, named as the run, must not make the run write where it points."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = Run(new_run_id(), root)
    runroot.make_root(root)
    run.dir.symlink_to(elsewhere)

    with pytest.raises(RunRootError, match="not a run directory this lab made"):
        run.hold()
    assert list(elsewhere.iterdir()) == []


def test_a_lock_the_sweeper_cannot_open_counts_as_alive(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a missing lock means dead; one the sweeper may not open (another user's run, which
    root cannot produce here, hence the refusal is injected) is left alone."""
    run = Run(new_run_id(), root).hold()
    run.release()
    dead = Run(new_run_id(), root).hold()
    (dead.dir / ".alive").unlink()  # a killed run's directory, as release() would not leave it
    real_open = os.open

    def refuse_alive(path: os.PathLike[str] | str, flags: int, *args: int) -> int:
        if str(path).endswith("/.alive"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    try:
        monkeypatch.setattr(os, "open", refuse_alive)
        assert dead_run_dirs(root) == []
        monkeypatch.undo()
        assert dead_run_dirs(root) == [dead.dir]
    finally:
        monkeypatch.undo()
        dead.release()
