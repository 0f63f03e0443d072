"""The pin on scratch (lab/build/initramfs/pin), run in busybox sh on the host: which snapshot a
boot mounts, the request honoured once, the update policy and where it came from, the legacy
`pinned` file imported, and the generations of the union root's writable layer.
"""

from __future__ import annotations

import hashlib

import pytest

from lab.observe import BootRecord, record_from_console
from tests.guest_shell import Guest, manifest, sha, smbios_oem_strings

ALL_KEYS = (
    "tag", "snapshot", "branch", "loader", "policy", "requested", "source", "generation",
    "state", "tries", "boot",
)  # fmt: skip


def write_pin(guest: Guest, **values: str) -> None:
    text = "".join(f"{key}={value}\n" for key, value in values.items())
    guest.file("scratch/ucvm/pin").write_text(text)


def read_pin(guest: Guest) -> dict[str, str]:
    lines = guest.file("scratch/ucvm/pin").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def pinned_at(guest: Guest, tag: str, requested: str = "-", generation: str = "1") -> None:
    write_pin(
        guest,
        tag=tag,
        snapshot=sha(tag + ".img"),
        branch="prod",
        loader="0.1",
        policy="rebase",
        requested=requested,
        generation=generation,
        state="confirmed",
    )


def boot_repo(guest: Guest, script: str = "") -> tuple[BootRecord, str]:
    """phase_repo, then ``script`` (which may print the variables it set)."""
    text = guest.prints(f"boot_args; phase_repo; {script}")
    record = record_from_console(text)
    assert [p.name for p in record.phases] == ["repo"], text
    return record, text


def chosen(guest: Guest) -> dict[str, str]:
    record, _ = boot_repo(guest)
    repo = record.phases[0]
    assert repo.status == "ok", repo
    return repo.fields


def test_a_snapshot_pinned_by_hash_stays_after_its_branch_moved(guest: Guest) -> None:
    pinned_at(guest, "1.1")
    guest.manifest = manifest(prod="1.2")
    fields = chosen(guest)
    assert (fields["tag"], fields["source"], fields["pinned"]) == ("1.1", "pinned", "1.1")
    assert fields["snapshot"] == sha("1.1.img")[:12]


def test_the_same_request_again_follows_the_pin(guest: Guest) -> None:
    # Booted with ucvm.version=previous when that was 1.0; the boot option comes again at
    # every reboot, and `previous` is 1.1 now: the pin governs, the VM stays where it was.
    pinned_at(guest, "1.0", requested="previous")
    guest.cmdline = "console=ttyS0 ucvm.version=previous"
    fields = chosen(guest)
    assert (fields["tag"], fields["source"]) == ("1.0", "pinned")


def test_a_changed_request_re_pins_in_a_new_generation(guest: Guest) -> None:
    pinned_at(guest, "1.0", requested="previous", generation="3")
    guest.smbios("11-0", smbios_oem_strings("ucvm.version=1.2"))
    guest.file("scratch/ucvm/layers/3/upper/root").mkdir(parents=True)  # a local change
    _, text = boot_repo(guest, 'prepare_layer; echo "generation=$GENERATION carried=$CARRIED"')
    fields = record_from_console(text).phases[0].fields
    assert (fields["tag"], fields["source"], fields["pinned"]) == ("1.2", "requested", "1.0")
    assert "generation=4 carried=none" in text  # not rebased here: said, not silent
    assert guest.file("scratch/ucvm/layers/4/work").is_dir()


def test_the_same_snapshot_keeps_its_generation(guest: Guest) -> None:
    pinned_at(guest, "1.2", requested="1.2", generation="3")
    guest.cmdline = "console=ttyS0 ucvm.version=1.2"
    guest.file("scratch/ucvm/layers/3/upper").mkdir(parents=True)
    _, text = boot_repo(guest, 'prepare_layer; echo "generation=$GENERATION carried=$CARRIED."')
    assert "generation=3 carried=." in text


def test_a_pin_whose_tag_is_gone_finds_its_image_under_another_tag(guest: Guest) -> None:
    write_pin(guest, tag="1.1-renamed", snapshot=sha("1.1.img"), requested="-")
    fields = chosen(guest)
    assert (fields["tag"], fields["snapshot"]) == ("1.1", sha("1.1.img")[:12])


def test_a_pinned_snapshot_no_longer_published_is_a_clear_failure(guest: Guest) -> None:
    write_pin(guest, tag="0.9", snapshot=sha("0.9.img"), requested="-")
    record, _ = boot_repo(guest)
    repo = record.phases[0]
    assert (repo.status, repo.fields["reason"]) == ("failed", "unknown-version")
    assert repo.fields["pinned"] == "0.9"
    assert "no longer published" in repo.fields["detail"]
    assert "ucvm.version=" in repo.fields["detail"]


def test_an_older_loader_s_pin_and_overlay_are_imported(guest: Guest) -> None:
    guest.file("scratch/ucvm/pinned").write_text("1.1\n")
    kept = guest.file("scratch/ucvm/overlay/1.1/upper/etc/kept.conf")
    kept.parent.mkdir(parents=True)
    kept.write_text("local\n")
    guest.file("scratch/ucvm/overlay/1.0/upper").mkdir(parents=True)
    fields = chosen(guest)
    assert (fields["tag"], fields["source"]) == ("1.1", "pinned")
    pin = read_pin(guest)
    assert (pin["tag"], pin["requested"], pin["generation"]) == ("1.1", "?", "1")
    assert guest.file("scratch/ucvm/layers/1/upper/etc/kept.conf").read_text() == "local\n"
    assert not guest.file("scratch/ucvm/overlay").exists()
    assert not guest.file("scratch/ucvm/pinned").exists()


def test_any_request_beats_a_legacy_pin(guest: Guest) -> None:
    guest.file("scratch/ucvm/pinned").write_text("1.1\n")
    guest.context(cvmfs_tag="1.0")
    fields = chosen(guest)
    assert (fields["tag"], fields["source"]) == ("1.0", "user-data")


@pytest.mark.parametrize(
    ("option", "user_data", "pinned", "policy", "source"),
    [
        pytest.param(None, None, None, "rebase", "default", id="default"),
        pytest.param(None, None, "diverge", "diverge", "pin", id="pin"),
        pytest.param(None, "stay", "diverge", "stay", "user-data", id="user-data-over-pin"),
        pytest.param("diverge", "stay", "rebase", "diverge", "boot-option", id="option-first"),
    ],
)
def test_the_update_policy_and_where_it_was_set(
    guest: Guest,
    option: str | None,
    user_data: str | None,
    pinned: str | None,
    policy: str,
    source: str,
) -> None:
    if option:
        guest.smbios("11-0", smbios_oem_strings(f"ucvm.update={option}"))
    if user_data:
        guest.context(update_policy=user_data)
    if pinned:
        write_pin(guest, tag="1.2", snapshot=sha("1.2.img"), policy=pinned, requested="-")
    _, text = boot_repo(guest, 'echo "policy=$POLICY from=$POLICY_SOURCE"')
    assert record_from_console(text).phases[0].fields["policy"] == policy
    assert f"policy={policy} from={source}" in text


def test_a_bad_policy_option_stops_the_boot_with_the_choices(guest: Guest) -> None:
    guest.cmdline = "console=ttyS0 ucvm.update=sometimes"
    record, _ = boot_repo(guest)
    repo = record.phases[0]
    assert (repo.status, repo.fields["reason"]) == ("failed", "bad-option")
    assert repo.fields["value"] == "sometimes"
    assert repo.fields["detail"] == "expected one of: stay rebase diverge"


def test_pin_put_sets_keys_keeps_the_others_and_leaves_no_temporary(guest: Guest) -> None:
    write_pin(guest, tag="1.1", tries="0", boot="4")
    guest.prints('pin_put "$PIN" tries=1 state=trial')
    assert read_pin(guest) == {"tag": "1.1", "boot": "4", "tries": "1", "state": "trial"}
    assert not guest.file("scratch/ucvm/pin.new").exists()
    assert guest.prints("pin_get boot; pin_get missing || echo absent") == "4\nabsent\n"


def test_the_pin_written_after_the_mount_names_everything(guest: Guest) -> None:
    pinned_at(guest, "1.0", requested="previous", generation="2")
    guest.cmdline = "console=ttyS0 ucvm.version=1.1"
    guest.file("scratch/ucvm/boots").write_text("5\n")
    boot_repo(guest, "pin_write")
    pin = read_pin(guest)
    assert tuple(pin) == ALL_KEYS
    assert pin == {
        "tag": "1.1",
        "snapshot": sha("1.1.img"),
        "branch": "prod",
        "loader": "0.1",  # a snapshot line without a loader field: the image's own
        "policy": "rebase",
        "requested": "1.1",
        "source": "requested",
        "generation": "3",
        "state": "confirmed",
        "tries": "0",
        "boot": "5",
    }


@pytest.mark.parametrize(
    ("change", "kept"),
    [pytest.param(True, ["3", "4"], id="new-version"), pytest.param(False, ["2", "3"], id="same")],
)
def test_the_booted_and_the_previous_generation_are_kept(
    guest: Guest, change: bool, kept: list[str]
) -> None:
    for generation in ("1", "2", "3"):
        guest.file(f"scratch/ucvm/layers/{generation}/upper").mkdir(parents=True)
    pinned_at(guest, "1.1", requested="1.1", generation="3")
    guest.cmdline = f"console=ttyS0 ucvm.version={'1.2' if change else '1.1'}"
    boot_repo(guest, "prepare_layer")
    layers = guest.file("scratch/ucvm/layers")
    assert sorted(path.name for path in layers.iterdir()) == kept


# --- trial and rollback ---------------------------------------------------------------------


def stage(guest: Guest, tag: str, serial: str = "9") -> None:
    """What ucvm-update --apply leaves: the next pin and the manifest that named it."""
    staged = guest.file("scratch/ucvm/staged")
    staged.mkdir()
    snapshot = sha(tag + ".img")
    pin = f"tag={tag}\nsnapshot={snapshot}\nbranch=prod\nloader=0.1\nserial={serial}\n"
    (staged / "pin").write_text(pin)
    (staged / "manifest.signed").write_text(guest.manifest.replace("serial 9", f"serial {serial}"))


def test_a_staged_update_becomes_a_trial_pin(guest: Guest) -> None:
    pinned_at(guest, "1.1", requested="previous", generation="2")
    before = guest.file("scratch/ucvm/pin").read_text()
    stage(guest, "1.2")
    guest.cmdline = "console=ttyS0 ucvm.version=previous"  # the boot option comes again
    text = guest.prints("boot_args; phase_pin; phase_repo")
    repo = record_from_console(text).phases[0].fields
    assert (repo["tag"], repo["source"], repo["pinned"]) == ("1.2", "staged", "1.2")
    pin = read_pin(guest)
    assert (pin["tag"], pin["snapshot"]) == ("1.2", sha("1.2.img"))
    assert (pin["state"], pin["tries"], pin["generation"]) == ("trial", "1", "3")
    assert pin["requested"] == "previous"  # the same request still follows the pin
    assert guest.file("scratch/ucvm/pin.prev").read_text() == before
    assert not guest.file("scratch/ucvm/staged").exists()


def test_a_trial_that_never_reached_ready_is_rolled_back(guest: Guest) -> None:
    pinned_at(guest, "1.1", generation="2")
    guest.file("scratch/ucvm/layers/2/upper/root").mkdir(parents=True)
    stage(guest, "1.2")
    guest.prints("boot_args; phase_pin")  # the trial's first boot (it then panicked)
    guest.file("scratch/ucvm/layers/3/upper").mkdir(parents=True)
    text = guest.prints("boot_args; phase_pin; phase_repo")
    repo = record_from_console(text).phases[0].fields
    assert (repo["tag"], repo["source"]) == ("1.1", "rollback")
    assert (repo["rollback"], repo["reason"], repo["failed"]) == ("1", "not-ready", "1.2")
    pin = read_pin(guest)
    assert (pin["tag"], pin["generation"], pin["state"]) == ("1.1", "2", "confirmed")
    assert not guest.file("scratch/ucvm/pin.prev").exists()
    assert not guest.file("scratch/ucvm/layers/3").exists()
    assert guest.file("scratch/ucvm/layers/2/upper/root").is_dir()  # the local changes
    failed = dict(
        line.split("=", 1) for line in guest.file("scratch/ucvm/failed").read_text().splitlines()
    )
    assert (failed["tag"], failed["reason"]) == ("1.2", "not-ready")


def test_the_kexec_d_second_phase_does_not_count_the_trial_again(guest: Guest) -> None:
    write_pin(guest, tag="1.2", snapshot=sha("1.2.img"), state="trial", tries="1")
    guest.file("scratch/ucvm/pin.prev").write_text("tag=1.1\n")
    guest.cmdline = "console=ttyS0 ucvm.kexec_from=0.1"
    guest.prints("boot_args; phase_pin")
    assert read_pin(guest)["tries"] == "1"
    assert read_pin(guest)["state"] == "trial"


@pytest.mark.parametrize("fault", ["bad-signature", "older-serial"])
def test_a_staged_update_that_does_not_verify_is_moved_aside(guest: Guest, fault: str) -> None:
    guest.file("scratch/ucvm/serial").write_text("9\n")
    pinned_at(guest, "1.1")
    before = guest.file("scratch/ucvm/pin").read_text()
    stage(guest, "1.2", serial="8" if fault == "older-serial" else "9")
    bad = str(guest.file("scratch/ucvm/staged/manifest.signed"))
    env = {"FAKE_BAD_SIGNATURE": bad} if fault == "bad-signature" else {}
    text = guest.prints("boot_args; phase_pin; phase_repo", **env)
    repo = record_from_console(text).phases[0].fields
    assert (repo["tag"], repo["staged"]) == ("1.1", "refused")
    expected = "does not verify" if fault == "bad-signature" else "serial 8 is older than 9"
    assert expected in repo["staged_detail"]
    assert guest.file("scratch/ucvm/pin").read_text() == before
    assert guest.file("scratch/ucvm/staged.refused/pin").exists()
    assert not guest.file("scratch/ucvm/staged").exists()


# --- the two-phase boot (lab/build/initramfs/kexec) -------------------------------------------

KERNEL, INITRD = b"staged kernel 0.2\n", b"staged initrd 0.2\n"


def stage_loader(guest: Guest, version: str = "0.2", **apply: str) -> None:
    staged = guest.file(f"scratch/ucvm/kexec/{version}")
    staged.mkdir(parents=True)
    (staged / "kernel").write_bytes(KERNEL)
    (staged / "initrd").write_bytes(INITRD)
    values = {
        "version": version,
        "kernel": "kernel",
        "kernel_sha256": hashlib.sha256(KERNEL).hexdigest(),
        "initrd": "initrd",
        "initrd_sha256": hashlib.sha256(INITRD).hexdigest(),
        "cmdline": "",
    } | apply
    (staged / "apply").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def kexec_phases(text: str) -> list[dict[str, str]]:
    record = record_from_console(text)
    return [{"status": p.status, **p.fields} for p in record.phases if p.name == "kexec"]


def trial_on_loader(guest: Guest, loader: str) -> None:
    """A trial pin on 2.0-dev (its snapshot here 1.3-rc1's) that wants ``loader``, the
    confirmed 1.2 before it as pin.prev."""
    pinned_at(guest, "1.2", generation="2")
    guest.file("scratch/ucvm/pin").rename(guest.file("scratch/ucvm/pin.prev"))
    write_pin(guest, tag="2.0-dev", snapshot=sha("1.3-rc1.img"), loader=loader, state="trial",
              tries="1", generation="3")  # fmt: skip


def test_phase_1_kexecs_into_the_staged_loader_the_pin_names(guest: Guest) -> None:
    trial_on_loader(guest, "0.2")
    stage_loader(guest)
    text = guest.prints("boot_args; phase_kexec")
    (load, failed) = kexec_phases(text)
    assert load == {
        "status": "ok",
        "step": "load",
        "from": "0.1",
        "to": "0.2",
        "kernel": hashlib.sha256(KERNEL).hexdigest()[:12],
        "initrd": hashlib.sha256(INITRD).hexdigest()[:12],
    }
    calls = guest.calls()
    assert calls[-3:-1] == ["umount /scratch", "network_down"]  # scratch clean, NICs quiet
    run = guest.file("run/ucvm/kexec")
    assert calls[-1] == f"kexec {run}/kernel {run}/initrd console=ttyS0 ucvm.kexec_from=0.1"
    assert (run / "initrd").read_bytes() == INITRD
    # A kexec that returns did not happen: the boot stops and says why.
    assert (failed["status"], failed["reason"]) == ("failed", "load-failed")
    assert "Operation not permitted" in failed["detail"]


@pytest.mark.parametrize(
    ("damage", "reason", "file"),
    [
        pytest.param("flip", "hash-mismatch", "initrd", id="hash-mismatch"),
        pytest.param("delete", "missing", "kernel", id="missing"),
        pytest.param("escape", "missing", "kernel", id="path-outside-its-directory"),
    ],
)
def test_a_staged_loader_that_does_not_match_is_refused_and_the_old_pin_boots(
    guest: Guest, damage: str, reason: str, file: str
) -> None:
    trial_on_loader(guest, "0.2")
    stage_loader(guest, kernel="../kernel" if damage == "escape" else "kernel")
    staged = guest.file("scratch/ucvm/kexec/0.2")
    if damage == "flip":
        (staged / "initrd").write_bytes(b"Staged initrd 0.2\n")
    elif damage == "delete":
        (staged / "kernel").unlink()
    text = guest.prints("boot_args; phase_kexec; phase_repo")
    (refused,) = kexec_phases(text)
    assert refused == {"status": "refused", "reason": reason, "to": "0.2", "file": file}
    assert not any(call.startswith("kexec ") for call in guest.calls())
    assert guest.file("scratch/ucvm/kexec/0.2.refused/apply").exists()
    repo = record_from_console(text).phase("repo")
    assert repo is not None
    assert (repo.fields["tag"], repo.fields["rollback"]) == ("1.2", "1")
    assert repo.fields["reason"] == "loader-refused"


def test_phase_2_says_where_it_came_from_and_never_kexecs_again(guest: Guest) -> None:
    trial_on_loader(guest, "0.2")
    stage_loader(guest)
    guest.file("loader-version").write_text("0.2\n")
    guest.cmdline = "console=ttyS0 ucvm.kexec_from=0.1"
    text = guest.prints("boot_args; phase_pin; phase_kexec")
    assert kexec_phases(text) == [{"status": "ok", "from": "0.1", "to": "0.2"}]
    assert not any(call.startswith("kexec ") for call in guest.calls())


@pytest.mark.parametrize("staged", [True, False])
def test_no_kexec_without_another_staged_loader(guest: Guest, staged: bool) -> None:
    trial_on_loader(guest, "0.1" if staged else "0.2")
    if staged:
        stage_loader(guest)  # staged, but the pin wants the image's own loader
    text = guest.prints("boot_args; phase_kexec")
    assert kexec_phases(text) == []
    assert guest.calls() == []


def test_a_trial_stays_a_trial_until_the_os_is_ready(guest: Guest) -> None:
    pinned_at(guest, "1.1", generation="2")
    stage(guest, "1.2")
    guest.file("scratch/ucvm/staged/pin").write_text(
        guest.file("scratch/ucvm/staged/pin").read_text().replace("branch=prod", "branch=lts")
    )
    guest.prints("boot_args; phase_pin; phase_repo; pin_write")
    pin = read_pin(guest)
    assert (pin["tag"], pin["state"], pin["tries"]) == ("1.2", "trial", "1")
    assert pin["branch"] == "lts"  # the branch it follows, not where the tag was published


def test_a_power_cut_right_after_promotion_does_not_promote_again(guest: Guest) -> None:
    pinned_at(guest, "1.1", generation="2")
    guest.file("scratch/ucvm/layers/2/upper/root").mkdir(parents=True)
    stage(guest, "1.2")
    guest.prints("boot_args; phase_pin")
    prev = guest.file("scratch/ucvm/pin.prev").read_text()
    stage(guest, "1.2")  # the removal of staged/ was lost with the power
    guest.file("scratch/ucvm/pin").write_text(
        guest.file("scratch/ucvm/pin").read_text().replace("tries=1", "tries=0")
    )
    guest.prints("boot_args; phase_pin")
    pin = read_pin(guest)
    assert (pin["tag"], pin["generation"], pin["state"]) == ("1.2", "3", "trial")
    assert guest.file("scratch/ucvm/pin.prev").read_text() == prev  # the rollback point kept
    assert not guest.file("scratch/ucvm/staged").exists()
    assert guest.file("scratch/ucvm/layers/2/upper/root").is_dir()


def test_a_loader_only_update_keeps_the_writable_layer(guest: Guest) -> None:
    pinned_at(guest, "1.2", generation="2")
    stage(guest, "1.2")
    guest.file("scratch/ucvm/staged/pin").write_text(
        guest.file("scratch/ucvm/staged/pin").read_text().replace("loader=0.1", "loader=0.2")
    )
    guest.prints("boot_args; phase_pin")
    pin = read_pin(guest)
    assert (pin["loader"], pin["generation"], pin["state"]) == ("0.2", "2", "trial")


def test_a_staged_snapshot_the_staged_manifest_does_not_list_is_refused(guest: Guest) -> None:
    pinned_at(guest, "1.1")
    stage(guest, "1.2")
    staged = guest.file("scratch/ucvm/staged/pin")
    staged.write_text(staged.read_text().replace(sha("1.2.img"), sha("9.9.img")))
    text = guest.prints("boot_args; phase_pin; phase_repo")
    repo = record_from_console(text).phases[0].fields
    assert (repo["tag"], repo["staged"]) == ("1.1", "refused")
    assert "not in the manifest" in repo["staged_detail"]


def test_generations_kept_across_a_gap_are_the_rollback_s_and_the_newest_below(
    guest: Guest,
) -> None:
    for generation in ("1", "2", "4"):
        guest.file(f"scratch/ucvm/layers/{generation}/upper").mkdir(parents=True)
    pinned_at(guest, "1.2", requested="1.2", generation="5")
    guest.file("scratch/ucvm/pin.prev").write_text("tag=1.0\ngeneration=2\n")
    guest.cmdline = "console=ttyS0 ucvm.version=1.2"
    boot_repo(guest, "prepare_layer")
    layers = guest.file("scratch/ucvm/layers")
    assert sorted(path.name for path in layers.iterdir()) == ["2", "4", "5"]
