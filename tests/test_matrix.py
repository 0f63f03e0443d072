"""Tests of lab.matrix: the real matrix.yaml loads, and every bad input is reported precisely."""

import os
import pickle
import re
import shutil
from pathlib import Path

import pytest

from lab.build import bootloader
from lab.matrix import Cell, Matrix, MatrixError, load
from lab.targets import registry
from lab.targets.profiles import PROFILES as REAL_PROFILES

REAL_MATRIX = Path(__file__).resolve().parents[1] / "matrix.yaml"

# The names the small matrices below are checked against (their messages list them); the real
# matrix is loaded with the lab's own: the registry's drivers, profiles and image formats.
PROFILES = {
    "kvm", "openstack", "opennebula", "vmware", "virtualbox",
    "hyperv", "ec2", "gce", "xen", "parallels",
}  # fmt: skip
DRIVERS = {"libvirt": {"uri", "uri_env", "unavailable"}}  # driver -> its settings keys
CHECKS = {"boot", "reboot", "image_size", "context"}
REQUIRED_CHECKS = {"image_size"}
IMAGE_FORMATS = {"raw", "qcow2", "iso", "ova", "vdi", "vhd", "vhdx", "gce-tar"}

# A small valid matrix; each bad case below changes one piece of it (line numbers after it).
GOOD_MATRIX = """\
settings:
  accel: auto
  libvirt_uri: qemu:///system
  run_root: /tmp/ucvm
  reports: reports
  boot_budget_s: 240
  scratch_gb: 1
versions: [newest, previous]
checks:
  boot: {description: boots}
  image_size: {description: size, budget_mb: 12}
targets:
  - {name: kvm, driver: libvirt, profile: kvm, tier: 1}
  - {name: vmware, driver: libvirt, profile: vmware, tier: 2}
gate:
  required_tiers: [1]
  allow_known_issues: true
  known_issues: known-issues.yaml
"""
#  1 settings        5 reports          9 checks       13 target kvm       17 allow_known_issues
#  2 accel           6 boot_budget_s   10 boot         14 target vmware    18 known_issues
#  3 libvirt_uri     7 scratch_gb      11 image_size   15 gate
#  4 run_root        8 versions        12 targets      16 required_tiers

VMWARE = "targets[1] (name 'vmware')"


def load_matrix(path: Path, env: dict[str, str] | None = None) -> Matrix:
    return load(
        path,
        profiles=PROFILES,
        drivers=DRIVERS,
        image_formats=IMAGE_FORMATS,
        checks=CHECKS,
        required_checks=REQUIRED_CHECKS,
        env={} if env is None else env,
    )


def problems_of(path: Path, env: dict[str, str] | None = None) -> tuple[str, ...]:
    with pytest.raises(MatrixError) as caught:
        load_matrix(path, env)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


@pytest.fixture
def matrix_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`matrix.yaml`, relative, in a working directory holding only an empty
    known-issues.yaml (the file GOOD_MATRIX names); the test writes its text."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "known-issues.yaml").write_text("")
    return Path("matrix.yaml")


# --------------------------------------------------------------------------- the real matrix


def load_real_matrix(env: dict[str, str] | None = None) -> Matrix:
    """matrix.yaml as the lab loads it (registry.load_matrix), with a given environment."""
    return load(
        REAL_MATRIX,
        profiles=REAL_PROFILES,
        drivers=registry.SETTINGS,
        image_formats=bootloader.IMAGE_FORMATS,
        checks=registry.CHECKS,
        required_checks=registry.REQUIRED_CHECKS,
        env={} if env is None else env,
    )


def test_the_real_matrix_loads() -> None:
    matrix = load_real_matrix()

    assert [target.name for target in matrix.targets][:3] == ["kvm", "openstack", "opennebula"]
    assert matrix.versions == ("newest", "previous", "1.0", "devel")
    assert matrix.settings.accel == "auto"
    assert matrix.settings.boot_budget_s == 240.0
    assert matrix.settings.reports == REAL_MATRIX.parent / "reports"
    assert matrix.gate.required_tiers == (1,)
    assert matrix.gate.known_issues == REAL_MATRIX.parent / "known-issues.yaml"
    assert matrix.gate.known_issues.is_file()
    assert matrix.gate.max_ratio["ready_s"] > 1 and matrix.gate.min_boots >= 1
    assert matrix.checks["image_size"].budget_mb == 12.0
    assert matrix.checks["boot"].budget_mb is None


def test_the_real_matrix_loads_as_the_lab_loads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("UCVM_")]:
        monkeypatch.delenv(name)

    assert registry.load_matrix(REAL_MATRIX) == load_real_matrix()


def test_the_real_matrix_uses_every_driver_the_registry_has() -> None:
    """No driver is registered that no target runs, and no target names one not registered."""
    matrix = load_real_matrix()

    assert {target.driver for target in matrix.targets} == set(registry.DRIVERS)


def test_the_real_matrix_refuses_a_driver_the_lab_does_not_have() -> None:
    """The drivers are checked against the registry's: without ec2 and vmware, their
    targets are errors at their lines."""
    with pytest.raises(MatrixError) as caught:
        load(
            REAL_MATRIX,
            profiles=REAL_PROFILES,
            drivers={"libvirt": registry.SETTINGS["libvirt"]},
            image_formats=bootloader.IMAGE_FORMATS,
            checks=registry.CHECKS,
            env={},
        )
    lines = REAL_MATRIX.read_text().splitlines()
    problems = caught.value.problems
    assert len(problems) == 2, problems
    for problem, name, driver in zip(
        problems, ["ec2-real", "vsphere-real"], ["ec2", "vmware"], strict=True
    ):
        line = int(problem.split(":")[1])
        assert f"name: {name}," in lines[line - 1]
        assert f"(name '{name}').driver: unknown driver '{driver}'; expected one of: libvirt" in (
            problem
        )


def test_the_real_matrix_targets_keep_their_options() -> None:
    matrix = load_real_matrix()

    assert matrix.target("kvm").evidence == "profile"
    assert matrix.target("kvm").image_format is None
    assert matrix.target("kvm").driver == "libvirt"
    assert matrix.target("virtualbox-vdi").image_format == "vdi"
    assert matrix.target("xen").tier == 3
    assert matrix.target("xen").settings == {"uri": "xen:///system"}
    assert matrix.target("kvm-remote").evidence == "real"


def test_the_real_matrix_has_the_real_clouds() -> None:
    matrix = load_real_matrix()

    ec2 = matrix.target("ec2-real")
    assert (ec2.driver, ec2.profile, ec2.tier, ec2.evidence) == ("ec2", "ec2", 3, "real")
    assert ec2.settings == {"region": "eu-central-1"}
    vsphere = matrix.target("vsphere-real")
    assert (vsphere.driver, vsphere.profile, vsphere.tier, vsphere.evidence) == (
        "vmware",
        "vmware",
        3,
        "real",
    )
    # tier 3: reported where they can run, never gating a release
    assert 3 not in matrix.gate.required_tiers


def test_the_real_matrix_checks_contextualization_on_the_previous_version() -> None:
    context = load_real_matrix().checks["context"]

    assert context.versions == ("previous",)
    assert (context.covers("previous"), context.covers("newest")) == (True, False)
    assert context.budget_mb is None
    assert context.boot_budget_s == 480  # cloud-init's stages, beyond settings.boot_budget_s
    assert load_real_matrix().checks["boot"].boot_budget_s is None  # the settings' budget


def test_the_real_matrix_takes_a_uri_from_the_environment() -> None:
    matrix = load_real_matrix(env={"UCVM_KVM_REMOTE_URI": "qemu+ssh://lab1/system"})

    assert matrix.target("kvm-remote").settings["uri"] == "qemu+ssh://lab1/system"


# --------------------------------------------------------------------------- bad input

KNOWN_ISSUES_LINE = "known_issues: known-issues.yaml"  # the good matrix's last line
# (text to replace, its replacement, line reported, key path reported, what the message says)
BAD_CASES = [
    pytest.param(
        "accel: auto", "accel: auto: x",
        2, "YAML", "mapping values are not allowed here",
        id="yaml-syntax",
    ),
    pytest.param(
        "  scratch_gb: 1\n", "  scratch_gb: 1\n  accel: kvm\n",
        8, "YAML", 'duplicate key "accel"',
        id="duplicate-key",
    ),
    pytest.param(
        "tier: 2}", "tier: 2, colour: red}",
        14, f"{VMWARE}.colour",
        "unknown key 'colour'; allowed keys: name, driver, profile, tier, evidence, "
        "image_format, settings",
        id="unknown-key-in-target",
    ),
    pytest.param(
        "gate:", "extras: 1\ngate:",
        15, "extras",
        "unknown key 'extras'; allowed keys: settings, versions, checks, targets, gate",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "budget_mb: 12", "budget: 12",
        11, "checks.image_size.budget",
        "allowed keys: description, budget_mb",
        id="unknown-key-in-check",
    ),
    pytest.param(
        "boot_budget_s: 240", "boot_budget_s: soon",
        6, "settings.boot_budget_s", "expected a number; found string 'soon'",
        id="wrong-type-number",
    ),
    pytest.param(
        "boot_budget_s: 240", "boot_budget_s: '240'",
        6, "settings.boot_budget_s", "expected a number; found string '240'",
        id="wrong-type-quoted-number",
    ),
    pytest.param(
        "allow_known_issues: true", "allow_known_issues: 'yes'",
        17, "gate.allow_known_issues", "expected true or false; found string 'yes'",
        id="wrong-type-bool",
    ),
    pytest.param(
        "boot: {description: boots}", "boot: boots",
        10, "checks.boot", "expected a mapping; found string 'boots'",
        id="wrong-type-mapping",
    ),
    pytest.param(
        "[newest, previous]", "[newest, 2024.10]",
        8, "versions[1]", "expected a string; found number 2024.1 (put it in quotes",
        id="wrong-type-unquoted-version",
    ),
    pytest.param(
        "tier: 2}", "tier: true}",
        14, f"{VMWARE}.tier", "expected an integer; found boolean true",
        id="wrong-type-tier",
    ),
    pytest.param(
        "tier: 2}", "tier: 2, settings: {uri: 22}}",
        14, f"{VMWARE}.settings.uri", "expected a string; found integer 22",
        id="wrong-type-driver-setting",
    ),
    pytest.param(
        "{name: kvm, driver: libvirt,", "{name: kvm,",
        13, "targets[0] (name 'kvm').driver", "required key is missing",
        id="missing-key-in-target",
    ),
    pytest.param(
        "  known_issues: known-issues.yaml\n", "",
        16, "gate.known_issues", "required key is missing",
        id="missing-key-in-gate",
    ),
    pytest.param(
        "profile: vmware", "profile: vmwar",
        14, f"{VMWARE}.profile",
        "unknown profile 'vmwar'; expected one of: ec2, gce, hyperv, kvm, opennebula, "
        "openstack, parallels, virtualbox, vmware, xen",
        id="unknown-profile",
    ),
    pytest.param(
        "driver: libvirt, profile: vmware", "driver: vbox, profile: vmware",
        14, f"{VMWARE}.driver", "unknown driver 'vbox'; expected one of: libvirt",
        id="unknown-driver",
    ),
    pytest.param(
        "tier: 2}", "tier: 2, image_format: vmdk}",
        14, f"{VMWARE}.image_format",
        "unknown image_format 'vmdk'; expected one of: gce-tar, iso, ova, qcow2, raw, vdi, "
        "vhd, vhdx",
        id="unknown-image-format",
    ),
    pytest.param(
        "name: vmware", "name: kvm",
        14, "targets[1] (name 'kvm').name",
        "duplicate target name 'kvm'; first defined at line 13",
        id="duplicate-target-name",
    ),
    pytest.param(
        "tier: 2}", "tier: 4}",
        14, f"{VMWARE}.tier", "expected a tier: 1, 2 or 3; found 4",
        id="tier-too-high",
    ),
    pytest.param(
        "tier: 2}", "tier: 0}",
        14, f"{VMWARE}.tier", "expected a tier: 1, 2 or 3; found 0",
        id="tier-too-low",
    ),
    pytest.param(
        "required_tiers: [1]", "required_tiers: [1, 5]",
        16, "gate.required_tiers[1]", "expected a tier: 1, 2 or 3; found 5",
        id="required-tier-out-of-range",
    ),
    pytest.param(
        "tier: 2}", "tier: 2, evidence: proof}",
        14, f"{VMWARE}.evidence", "expected one of 'profile' or 'real'; found string 'proof'",
        id="unknown-evidence",
    ),
    pytest.param(
        "[newest, previous]", "[]",
        8, "versions", "expected at least 1 item(s); found 0",
        id="empty-versions",
    ),
    pytest.param(
        "versions: [newest, previous]", "versions:\n  - newest\n  - previous\n  - newest",
        11, "versions[2]", "duplicate version 'newest'; first listed at line 9",
        id="duplicate-version",
    ),
    pytest.param(
        "boot: {description: boots}", "boot: {description: boots, versions: [newest, '1.0']}",
        10, "checks.boot.versions[1]",
        "check 'boot' names version '1.0', which the top-level `versions:` does not list",
        id="check-version-not-in-matrix",
    ),
    pytest.param(
        "boot: {description: boots}",
        "boot: {description: boots, pairs: [{from: '1.0', to: newest}]}",
        10, "checks.boot.pairs[0].from",
        "check 'boot' names version '1.0', which the top-level `versions:` does not list",
        id="pair-version-not-in-matrix",
    ),
    pytest.param(
        "boot: {description: boots}", "boot: {description: boots, pairs: [{from: previous}]}",
        10, "checks.boot.pairs[0].to", "required key is missing",
        id="pair-without-to",
    ),
    pytest.param(
        "boot: {description: boots}", "boot: {description: boots, targets: [kvm, vmwar]}",
        10, "checks.boot.targets[1]",
        "check 'boot' names target 'vmwar', which `targets:` does not define "
        "(did you mean vmware?)",
        id="check-target-unknown",
    ),
    pytest.param(
        "boot: {description: boots}", "boot: {description: boots, quick_targets: [kv]}",
        10, "checks.boot.quick_targets[0]", "names target 'kv'",
        id="check-quick-target-unknown",
    ),
    pytest.param(
        "[newest, previous]", "[newest, 'new est']",
        8, "versions[1]",
        "expected a name matching ^[A-Za-z0-9][A-Za-z0-9._-]*$; found string 'new est'",
        id="version-name-pattern",
    ),
    pytest.param(
        "name: vmware", "name: vm/ware",
        14, "targets[1] (name 'vm/ware').name", "expected a name matching",
        id="target-name-pattern",
    ),
    pytest.param(
        "accel: auto", "accel: fast",
        2, "settings.accel", "expected one of 'auto', 'kvm' or 'tcg'; found string 'fast'",
        id="unknown-accel",
    ),
    pytest.param(
        "scratch_gb: 1", "scratch_gb: -1",
        7, "settings.scratch_gb", "expected a number greater than 0; found integer -1",
        id="negative-size",
    ),
    pytest.param(
        "boot_budget_s: 240", "boot_budget_s: .inf",
        6, "settings.boot_budget_s", "expected a finite number",
        id="infinite-budget",
    ),
    pytest.param(
        "tier: 2}", "tier: 2, settings: {uri: 'x:///', uri_env: X}}",
        14, f"{VMWARE}.settings", "give either uri or uri_env, not both",
        id="uri-and-uri-env",
    ),
    pytest.param(
        "  boot: {description: boots}", "  7: {description: boots}",
        10, "checks.7", "invalid key: expected a string; found integer 7",
        id="check-name-not-a-string",
    ),
    # names the lab knows: the suites' checks, each driver's settings
    pytest.param(
        "  boot: {description: boots}", "  bot: {description: boots}",
        10, "checks.bot", "unknown check 'bot' (did you mean boot?); the suites' checks are: boot,",
        id="check-name-typo",
    ),
    pytest.param(
        "  image_size: {description: size, budget_mb: 12}\n", "",
        9, "checks", "check 'image_size' is missing; the lab always reads it",
        id="required-check-missing",
    ),
    pytest.param(
        "tier: 2}", "tier: 2, settings: {uri_evn: UCVM_X}}",
        14, f"{VMWARE}.settings.uri_evn",
        "unknown setting 'uri_evn' of driver 'libvirt' (did you mean uri_env?); it takes: unav",
        id="driver-setting-typo",
    ),
    # the run root (the sweeper deletes there) and the known-issues file
    pytest.param(
        "run_root: /tmp/ucvm", "run_root: /",
        4, "settings.run_root", "/ is the filesystem root: the sweeper would consider everything",
        id="run-root-slash",
    ),
    pytest.param(
        "run_root: /tmp/ucvm", "run_root: /home",
        4, "settings.run_root", "/home is a home directory; use a directory the lab owns alone",
        id="run-root-home",
    ),
    pytest.param(
        "run_root: /tmp/ucvm", f"run_root: {REAL_MATRIX.parent}",
        4, "settings.run_root", f"{REAL_MATRIX.parent} is the lab's checkout",
        id="run-root-checkout",
    ),
    pytest.param(
        "run_root: /tmp/ucvm", "run_root: ''",
        4, "settings.run_root", "expected an absolute path; found an empty string",
        id="run-root-empty",
    ),
    pytest.param(
        "run_root: /tmp/ucvm", "run_root: runs",
        4, "settings.run_root", "expected an absolute path; found 'runs'",
        id="run-root-relative",
    ),
    pytest.param(
        "known_issues: known-issues.yaml", "known_issues: known-isues.yaml",
        18, "gate.known_issues", "known-isues.yaml is not a file; create it",
        id="known-issues-missing",
    ),
    pytest.param(
        KNOWN_ISSUES_LINE, KNOWN_ISSUES_LINE + "\n  max_ratio: {ready: 1.2}",
        19, "gate.max_ratio.ready", "unknown figure 'ready'; expected one of: ready_s,",
        id="gate-unknown-figure",
    ),
    pytest.param(
        KNOWN_ISSUES_LINE, KNOWN_ISSUES_LINE + "\n  max_ratio: {ready_s: 0.8}",
        19, "gate.max_ratio.ready_s", "at least 1 (1.25: 25% worse is allowed); found 0.8",
        id="gate-ratio-below-one",
    ),
    pytest.param(
        KNOWN_ISSUES_LINE, KNOWN_ISSUES_LINE + "\n  min_boots: 0",
        19, "gate.min_boots", "greater than or equal to 1",
        id="gate-no-boots",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "line", "key_path", "expected"), BAD_CASES)
def test_a_bad_matrix_is_reported_with_its_place_and_expectation(
    matrix_file: Path, old: str, new: str, line: int, key_path: str, expected: str
) -> None:
    assert GOOD_MATRIX.count(old) == 1, "the case must change exactly one place"
    matrix_file.write_text(GOOD_MATRIX.replace(old, new))

    problems = problems_of(matrix_file)

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"matrix.yaml:{line}:"), problems[0]
    assert f": {key_path}: " in problems[0], problems[0]
    assert expected in problems[0], problems[0]


def test_the_good_matrix_of_the_bad_cases_is_good(matrix_file: Path) -> None:
    matrix_file.write_text(GOOD_MATRIX)

    assert load_matrix(matrix_file).versions == ("newest", "previous")


def test_the_column_points_at_the_bad_value(matrix_file: Path) -> None:
    matrix_file.write_text(GOOD_MATRIX.replace("profile: vmware", "profile: vmwar"))
    line_text = GOOD_MATRIX.splitlines()[13]
    column = line_text.index("profile: vmware") + len("profile: ") + 1

    assert problems_of(matrix_file)[0].startswith(f"matrix.yaml:14:{column}: ")


def test_an_unknown_key_is_reported_at_the_key(matrix_file: Path) -> None:
    matrix_file.write_text(
        GOOD_MATRIX.replace("  scratch_gb: 1\n", "  scratch_gb: 1\n  turbo: 1\n")
    )

    assert problems_of(matrix_file)[0].startswith("matrix.yaml:8:3: settings.turbo: ")


def test_every_problem_is_reported_in_file_order(matrix_file: Path) -> None:
    text = (
        GOOD_MATRIX.replace("profile: vmware", "profile: vmwar")
        .replace("accel: auto", "accel: fast")
        .replace("allow_known_issues: true", "allow_known_issues: 1")
    )
    matrix_file.write_text(text)

    problems = problems_of(matrix_file)

    assert [problem.split(":")[1] for problem in problems] == ["2", "14", "17"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", "expected a mapping; found nothing (null)", id="empty-file"),
        pytest.param("- newest\n", "expected a mapping; found a list", id="a-list"),
    ],
)
def test_a_file_that_is_not_a_mapping(matrix_file: Path, text: str, expected: str) -> None:
    matrix_file.write_text(text)

    assert problems_of(matrix_file) == (f"matrix.yaml:1:1: (top level): {expected}",)


def test_a_missing_file_is_a_matrix_error(matrix_file: Path) -> None:
    (problem,) = problems_of(matrix_file)

    assert problem.startswith("matrix.yaml: cannot read the file: ")


def test_gate_may_require_a_tier_no_target_has(matrix_file: Path) -> None:
    matrix_file.write_text(GOOD_MATRIX.replace("required_tiers: [1]", "required_tiers: [1, 3]"))

    assert load_matrix(matrix_file).gate.required_tiers == (1, 3)


# --------------------------------------------------------------------------- uri_env


@pytest.mark.parametrize(
    ("env", "expected_settings"),
    [
        pytest.param(
            {"LAB_URI": "qemu+ssh://lab1/system"},
            {"uri_env": "LAB_URI", "uri": "qemu+ssh://lab1/system"},
            id="set",
        ),
        pytest.param(
            {},
            {"uri_env": "LAB_URI", "unavailable": "environment variable LAB_URI is not set"},
            id="unset",
        ),
        pytest.param(
            {"LAB_URI": ""},
            {"uri_env": "LAB_URI", "unavailable": "environment variable LAB_URI is not set"},
            id="empty",
        ),
    ],
)
def test_uri_env_is_resolved_at_load(
    matrix_file: Path, env: dict[str, str], expected_settings: dict[str, str]
) -> None:
    matrix_file.write_text(
        GOOD_MATRIX.replace("tier: 2}", "tier: 2, settings: {uri_env: LAB_URI}}")
    )

    assert load_matrix(matrix_file, env).target("vmware").settings == expected_settings


# --------------------------------------------------------------------------- environment overrides


def test_settings_are_overridden_by_the_environment(matrix_file: Path) -> None:
    matrix_file.write_text(GOOD_MATRIX)
    env = {
        "UCVM_ACCEL": "tcg",
        "UCVM_LIBVIRT_URI": "qemu:///session",
        "UCVM_RUN_ROOT": "/var/tmp/runs",
        "UCVM_REPORTS": "out/reports",
        "UCVM_BOOT_BUDGET_S": "60",
        "UCVM_SCRATCH_GB": "2.5",
    }

    settings = load_matrix(matrix_file, env).settings

    assert settings.accel == "tcg"
    assert settings.libvirt_uri == "qemu:///session"
    assert settings.run_root == Path("/var/tmp/runs")
    assert settings.reports == matrix_file.resolve().parent / "out" / "reports"
    assert settings.boot_budget_s == 60.0
    assert settings.scratch_gb == 2.5


def test_without_env_the_process_environment_is_used(
    matrix_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix_file.write_text(GOOD_MATRIX)
    monkeypatch.setenv("UCVM_ACCEL", "kvm")

    matrix = load(
        matrix_file, profiles=PROFILES, drivers=DRIVERS, image_formats=IMAGE_FORMATS, checks=CHECKS
    )

    assert matrix.settings.accel == "kvm"


def test_ucvm_targets_is_left_to_the_caller(matrix_file: Path) -> None:
    matrix_file.write_text(GOOD_MATRIX)

    matrix = load_matrix(matrix_file, {"UCVM_TARGETS": "kvm"})

    assert [target.name for target in matrix.targets] == ["kvm", "vmware"]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("UCVM_BOOT_BUDGET_S", "soon", "expected a number; found string 'soon'"),
        ("UCVM_BOOT_BUDGET_S", "-5", "expected a number greater than 0"),
        ("UCVM_SCRATCH_GB", "nan", "expected a finite number"),
        ("UCVM_ACCEL", "TCG", "expected one of 'auto', 'kvm' or 'tcg'; found string 'TCG'"),
    ],
)
def test_a_bad_override_names_the_variable_value_and_type(
    matrix_file: Path, variable: str, value: str, expected: str
) -> None:
    matrix_file.write_text(GOOD_MATRIX)

    (problem,) = problems_of(matrix_file, {variable: value})

    assert problem.startswith(f"{variable}={value!r} ")
    assert expected in problem


def test_bad_overrides_and_bad_file_are_reported_together(matrix_file: Path) -> None:
    matrix_file.write_text(GOOD_MATRIX.replace("profile: vmware", "profile: vmwar"))

    problems = problems_of(matrix_file, {"UCVM_SCRATCH_GB": "lots"})

    assert len(problems) == 2
    assert problems[0].startswith("matrix.yaml:14:")
    assert problems[1].startswith("UCVM_SCRATCH_GB='lots' ")


# --------------------------------------------------------------------------- cells


@pytest.fixture
def matrix(matrix_file: Path) -> Matrix:
    matrix_file.write_text(GOOD_MATRIX)
    return load_matrix(matrix_file)


def test_cells_are_every_target_times_every_version(matrix: Matrix) -> None:
    assert [cell.id for cell in matrix.cells()] == [
        "kvm-newest",
        "kvm-previous",
        "vmware-newest",
        "vmware-previous",
    ]


def test_cells_only_keeps_the_named_targets_in_matrix_order(matrix: Matrix) -> None:
    cells = matrix.cells(only=["vmware", "kvm"])
    assert [cell.target.name for cell in cells] == ["kvm", "kvm", "vmware", "vmware"]

    assert [cell.id for cell in matrix.cells(only=["vmware"])] == [
        "vmware-newest",
        "vmware-previous",
    ]


def test_cells_only_with_an_unknown_name_lists_the_known_names(matrix: Matrix) -> None:
    with pytest.raises(MatrixError, match=r"unknown target 'vbox'; known targets: kvm, vmware"):
        matrix.cells(only=["kvm", "vbox"])


def test_cells_only_refuses_a_single_string(matrix: Matrix) -> None:
    with pytest.raises(TypeError):
        matrix.cells(only="kvm")


def test_target_by_name(matrix: Matrix) -> None:
    assert matrix.target("vmware").tier == 2
    with pytest.raises(MatrixError, match=r"unknown target 'vbox'; known targets: kvm, vmware"):
        matrix.target("vbox")


def test_cells_can_be_hashed_and_compared(matrix: Matrix) -> None:
    first, again = matrix.cells()[0], Cell(matrix.target("kvm"), "newest")

    assert first == again
    assert len({first, again}) == 1


def test_a_matrix_error_survives_pickling() -> None:
    """pytest-xdist workers send exceptions to the controller pickled."""
    error = MatrixError("first problem", "second problem")

    copy = pickle.loads(pickle.dumps(error))

    assert copy.problems == ("first problem", "second problem")
    assert str(copy) == "first problem\nsecond problem"


def test_a_check_may_cover_some_versions(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(GOOD_MATRIX.replace("boots}", "boots, versions: [previous]}"))
    (tmp_path / "known-issues.yaml").write_text("")
    check = load_matrix(path).checks["boot"]
    assert check.versions == ("previous",)
    assert (check.covers("previous"), check.covers("newest")) == (True, False)


# --------------------------------------------------------------------------- this round's limits


@pytest.mark.parametrize("setting", ["run_root", "libvirt_uri", "reports", "accel"])
def test_an_empty_override_is_an_error_not_unset(matrix_file: Path, setting: str) -> None:
    matrix_file.write_text(GOOD_MATRIX)
    variable = f"UCVM_{setting.upper()}"

    (problem,) = problems_of(matrix_file, {variable: ""})

    assert problem.startswith(f"{variable} is set but empty (overrides settings.{setting})")
    assert f"unset it (`unset {variable}`" in problem


def test_a_matrix_larger_than_the_limit_is_refused_before_parsing(matrix_file: Path) -> None:
    matrix_file.write_text(GOOD_MATRIX + "# padding\n" * 110_000)  # 1.1 MB of comments

    (problem,) = problems_of(matrix_file)

    assert problem.startswith("matrix.yaml: larger than 1,048,576 bytes")
    assert "UCVM_MAX_MATRIX_BYTES" in problem
    raised = load_matrix(matrix_file, {"UCVM_MAX_MATRIX_BYTES": "2000000"})
    assert raised.versions == ("newest", "previous")


@pytest.mark.parametrize("value", ["", "lots", "-1", "0"])
def test_a_bad_size_limit_is_refused(matrix_file: Path, value: str) -> None:
    matrix_file.write_text(GOOD_MATRIX)

    (problem,) = problems_of(matrix_file, {"UCVM_MAX_MATRIX_BYTES": value})

    assert problem == f"UCVM_MAX_MATRIX_BYTES={value!r}: expected a whole number of bytes (> 0)"


def with_targets(count: int) -> str:
    rows = "".join(
        f"  - {{name: t{i}, driver: libvirt, profile: kvm, tier: 2}}\n" for i in range(count)
    )
    return re.sub(r"(?ms)^targets:\n.*?^gate:", f"targets:\n{rows}gate:", GOOD_MATRIX)


def test_more_targets_than_the_limit_are_refused_at_the_targets_key(matrix_file: Path) -> None:
    matrix_file.write_text(with_targets(1001))

    (problem,) = problems_of(matrix_file)

    assert problem.startswith("matrix.yaml:12:1: targets: 1,001 targets; a matrix takes at most")


def test_the_limit_of_targets_itself_loads(matrix_file: Path) -> None:
    matrix_file.write_text(with_targets(1000))

    assert len(load_matrix(matrix_file).targets) == 1000


def test_every_driver_declares_its_settings() -> None:
    assert set(registry.SETTINGS) == set(registry.DRIVERS)
    assert registry.SETTINGS["libvirt"] >= {"uri", "uri_env"}


def test_the_known_checks_are_the_suites() -> None:
    """Every @pytest.mark.check(NAME) of suites/ is known, every known check is used there,
    and a required check is one that code reads unconditionally."""
    root = REAL_MATRIX.parent
    sources = {path: path.read_text() for path in (root / "suites").rglob("*.py")}
    marked = {m for text in sources.values() for m in re.findall(r"mark\.check\(\"(\w+)\"\)", text)}
    read = {
        m
        for text in [
            *sources.values(),
            *(p.read_text() for p in (root / "lab" / "cli").glob("*.py")),
        ]
        for m in re.findall(r"checks\[\"(\w+)\"\]", text)
    }
    assert marked | read == set(registry.CHECKS)
    assert set(registry.REQUIRED_CHECKS) == read - marked  # read, never skipped by a marker


def test_the_real_matrix_with_a_typo_in_a_setting_is_refused(tmp_path: Path) -> None:
    """`uri_evn` made kvm-remote boot locally and report it as real-platform evidence."""
    text = REAL_MATRIX.read_text().replace("uri_env: UCVM_KVM_REMOTE_URI", "uri_evn: X")
    (tmp_path / "matrix.yaml").write_text(text)
    shutil.copy(REAL_MATRIX.parent / "known-issues.yaml", tmp_path)

    with pytest.raises(MatrixError) as caught:
        registry.load_matrix(tmp_path / "matrix.yaml", env={})

    (problem,) = caught.value.problems
    assert "targets[12] (name 'kvm-remote').settings.uri_evn: unknown setting" in problem
    assert "(did you mean uri_env?)" in problem


def test_a_malformed_known_issues_file_is_refused_at_load(tmp_path: Path) -> None:
    shutil.copy(REAL_MATRIX, tmp_path)
    (tmp_path / "known-issues.yaml").write_text("- platform: KVM\n  colour: red\n")

    with pytest.raises(MatrixError) as caught:
        registry.load_matrix(tmp_path / "matrix.yaml", env={})

    assert str(caught.value).startswith(f"{tmp_path / 'known-issues.yaml'}:2:")
    assert "(gate.known_issues of " in str(caught.value)
