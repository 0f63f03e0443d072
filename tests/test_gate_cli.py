"""`ucvm-lab release candidate|promote` and `ucvm-lab gate --candidate`: their bad input is
refused before anything boots (exit 3, naming the fix), and a promotion needs a passing verdict
for exactly that candidate. No guest boots here: the gate runs in real guests in
tests/test_gate_run.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lab.build.osrepo.repository import Repository
from lab.cli.gate import VERDICTS, identity_now
from lab.targets.registry import load_matrix
from tests.commands import REPO, ucvm_lab

MATRIX = REPO / "matrix.yaml"
# One worker, in file order: the promotion test moves prod in the module's repository last
pytestmark = pytest.mark.xdist_group("gate-cli")


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.1 and 1.2 published as candidates (the builds are cached by the artifact store)."""
    root = tmp_path_factory.mktemp("gate") / "repo"
    for tag in ("1.1", "1.2"):
        done = ucvm_lab("release", "candidate", tag, "--repo", str(root))
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"candidate {tag} on branch testing" in done.stdout
    return root


def test_a_candidate_is_published_on_the_candidate_branch_never_on_prod(repo_dir: Path):
    manifest = Repository(repo_dir).manifest()
    assert manifest.branches == {"testing": "1.2"} and manifest.default_branch == "prod"
    refused = ucvm_lab("release", "candidate", "1.2", "--branch", "prod", "--repo", str(repo_dir))
    assert refused.returncode == 3 and "is the baseline branch" in refused.stderr
    unknown = ucvm_lab("release", "candidate", "9.9", "--repo", str(repo_dir))
    assert unknown.returncode == 3
    assert "9.9 is not in releases.yaml (its tags: 1.0, 1.1" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--candidate", "9.9"], "candidate 9.9 is not published (its tags: 1.1, 1.2)"),
        (["--candidate", "1.2"], "branch prod (gate.baseline_branch) has no release yet"),
        (["--candidate", "1.2", "--baseline", "1.0"], "baseline 1.0 is not published"),
        (["--candidate", "1.2", "--baseline", "1.2"], "1.2 is both the candidate and the baseline"),
        (["--candidate", "1.2", "--baseline", "1.1"], "baseline 1.1 was never gated"),
    ],
)
def test_bad_gate_input_is_refused_before_anything_boots(repo_dir: Path, args, message):
    done = ucvm_lab("gate", *args, "--repo", str(repo_dir))
    assert done.returncode == 3, done.stdout + done.stderr
    assert message in done.stderr and "nothing was run" in done.stderr
    assert "test session starts" not in done.stdout


def test_a_target_outside_the_required_tiers_is_refused(tmp_path: Path):
    root = tmp_path / "repo"
    assert ucvm_lab("release", "candidate", "1.1", "--repo", str(root)).returncode == 0
    assert ucvm_lab("release", "candidate", "1.2", "--repo", str(root)).returncode == 0
    forced = ucvm_lab("release", "promote", "1.1", "--to", "prod", "--force", "--repo", str(root))
    assert forced.returncode == 0 and "forced, without a verdict" in forced.stdout
    done = ucvm_lab("gate", "--candidate", "1.2", "--targets", "xen", "--repo", str(root))
    assert done.returncode == 3 and "--targets xen: not a target of the required tier" in (
        done.stderr
    )
    manifest = Repository(root).manifest()
    assert manifest.branches["prod"] == "1.1"
    assert [(p.branch, p.tag, p.forced) for p in manifest.promotions] == [("prod", "1.1", True)]


def write_verdict(repo_dir: Path, tag: str, passed: bool, **identity: str) -> Path:
    lab = load_matrix(MATRIX)
    now = vars(identity_now(Repository(repo_dir), tag, lab)) | identity
    path = repo_dir / VERDICTS / f"{tag}.json"
    path.parent.mkdir(exist_ok=True)
    failures = [] if passed else ["kvm boot: REGRESSION (failed in phase mount-os)"]
    data = {"passed": passed, "exit_code": 0 if passed else 1, "failures": failures}
    path.write_text(json.dumps(data | {"identity": now}))
    return path


def test_promote_needs_a_passing_verdict_for_exactly_that_candidate(repo_dir: Path):
    def promote() -> tuple[int, str]:
        done = ucvm_lab("release", "promote", "1.2", "--to", "prod", "--repo", str(repo_dir))
        return done.returncode, done.stdout + done.stderr

    code, said = promote()
    assert code == 1 and "no gate verdict for 1.2" in said and "nothing was promoted" in said
    write_verdict(repo_dir, "1.2", passed=False)
    code, said = promote()
    assert code == 1 and "did not pass" in said and "REGRESSION" in said
    write_verdict(repo_dir, "1.2", passed=True, snapshot="0" * 64)
    code, said = promote()
    assert code == 1 and "is for another snapshot 000000000000" in said
    write_verdict(repo_dir, "1.2", passed=True, matrix="1" * 64)
    assert "another matrix" in promote()[1]
    (repo_dir / VERDICTS / "1.2.json").write_text("{not json")
    assert "unreadable verdict" in promote()[1]
    assert "prod" not in Repository(repo_dir).manifest().branches

    verdict = write_verdict(repo_dir, "1.2", passed=True)
    code, said = promote()
    assert code == 0 and "prod is now 1.2 (verdict" in said, said
    manifest = Repository(repo_dir).manifest()
    assert manifest.resolve("newest").tag == "1.2"  # what a guest asking for newest boots
    [promotion] = manifest.promotions
    assert promotion.evidence == hashlib.sha256(verdict.read_bytes()).hexdigest()
