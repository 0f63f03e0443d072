"""The launch template of lab.targets.base, with a driver that boots nothing: the request is
settled once, what a driver declares it cannot do is refused before anything is named, and a
failed start is undone, with its clean-up failure as a note."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from lab.build.bootloader import BootLoader
from lab.run import Run, new_run_id
from lab.targets.base import Instance, LaunchRequest, Target, TargetError
from lab.targets.profiles import PROFILES, Profile

LOADER = BootLoader(Path("/nonexistent/boot-loader"), "6.1.0-test")


class FakeInstance(Instance):
    def __init__(self, name: str, target: Target[Any], profile: Profile, workdir: Path) -> None:
        super().__init__(name, target, profile, workdir)
        self.destroyed = 0
        self.fail_destroy = False

    def console(self) -> str:
        return ""

    def is_running(self) -> bool:
        return False

    def destroy(self) -> None:
        self.destroyed += 1
        if self.fail_destroy:
            raise TargetError("the fake could not be removed")


class FakeTarget(Target[FakeInstance]):
    """Says nothing about what it cannot do: the base class's loud defaults hold."""

    def __init__(self, run: Run, fail: BaseException | None = None) -> None:
        super().__init__("fake", PROFILES["kvm"], {}, run)
        self.fail = fail
        self.started: list[tuple[FakeInstance, LaunchRequest]] = []
        self.made: list[FakeInstance] = []
        self.fail_destroy = False

    def available(self) -> tuple[bool, str]:
        return True, "here"

    def _new_instance(self, name: str, profile: Profile, workdir: Path) -> FakeInstance:
        instance = FakeInstance(name, self, profile, workdir)
        instance.fail_destroy = self.fail_destroy
        self.made.append(instance)
        return instance

    def _start(self, instance: FakeInstance, request: LaunchRequest) -> None:
        self.started.append((instance, request))
        if self.fail is not None:
            raise self.fail


class LocalTarget(FakeTarget):
    REFUSALS: ClassVar[dict[str, str]] = {}
    LOCAL_WORKDIR = True

    def _translate(self, error: BaseException, instance: FakeInstance) -> BaseException:
        if isinstance(error, OSError):
            return TargetError(f"could not start {instance.name}: {error}")
        return error


@pytest.fixture
def run(tmp_path: Path) -> Run:
    held = Run(new_run_id(), tmp_path / "runs")
    held.dir.mkdir(parents=True)
    return held


def test_the_request_is_settled_once(run: Run) -> None:
    target = LocalTarget(run)
    instance = target.launch(LOADER, boot_args=["ucvm.version=1.1"])
    ((started, request),) = target.started
    assert started is instance
    assert request.image_format == "qcow2"  # the profile's, as none was asked for
    assert request.profile is target.profile and request.run_id == run.id
    assert request.boot_args == ("ucvm.version=1.1",) and dict(request.host_services) == {}
    target.launch(LOADER, profile=PROFILES["virtualbox"], image_format="vdi")
    assert target.started[1][1].image_format == "vdi"
    assert target.started[1][1].profile.name == "virtualbox"
    with pytest.raises(TypeError):
        request.host_services["x"] = 1  # type: ignore[index]  # frozen all the way down


def test_a_driver_that_declares_nothing_refuses_before_anything_is_made(run: Run) -> None:
    target = FakeTarget(run)
    for option, why in (
        ({"kernel_args": ""}, "FakeTarget has no direct kernel boot"),
        ({"boot_args": ["ucvm.version=1.1"]}, r"boot options \(ucvm.version=1.1\)"),
        ({"host_services": {"169.254.169.100:80": 8080}}, "cannot forward host_services"),
        ({"metadata_delay_s": 2.0}, "no metadata service of its own"),
    ):
        with pytest.raises(TargetError, match=why):
            target.launch(LOADER, **option)
    assert target.made == [] and target.started == []
    target.launch(LOADER)  # the image alone is fine
    assert len(target.started) == 1


def test_the_name_comes_from_the_run_and_a_local_workdir_is_made_once(run: Run) -> None:
    target = LocalTarget(run)
    request = LaunchRequest(LOADER, "qcow2", target.profile, run.id, suffix="probe")
    instance = target.launch_request(request)
    assert instance.name == run.resource_name("fake", "probe")
    assert instance.workdir == run.dir / instance.name and instance.workdir.is_dir()
    with pytest.raises(TargetError, match="exists already"):
        target.launch_request(
            LaunchRequest(LOADER, "qcow2", target.profile, run.id, suffix="probe")
        )
    remote = FakeTarget(run).launch(LOADER)
    assert not remote.workdir.exists()  # a remote driver keeps no files here


def test_a_failed_start_is_undone_and_a_failed_clean_up_is_a_note(run: Run) -> None:
    target = FakeTarget(run, fail=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        target.launch(LOADER)
    assert target.made[0].destroyed == 1

    target = FakeTarget(run, fail=TargetError("no capacity"))
    target.fail_destroy = True
    with pytest.raises(TargetError, match="no capacity") as failed:
        target.launch(LOADER)
    assert failed.value.__notes__ == [
        "clean-up after the failed launch: the fake could not be removed"
    ]


def test_the_driver_translates_its_library_errors(run: Run) -> None:
    target = LocalTarget(run, fail=OSError("the socket went away"))
    with pytest.raises(TargetError, match=r"could not start .*: the socket went away") as failed:
        target.launch(LOADER)
    assert isinstance(failed.value.__cause__, OSError)
    assert target.made[0].destroyed == 1


def test_a_driver_must_say_why_it_limits_an_option() -> None:
    with pytest.raises(TypeError, match="limits image_format but says not why"):

        class Unexplained(FakeTarget):
            IMAGE_FORMATS = frozenset(("raw",))

    with pytest.raises(TypeError, match="no such launch option"):

        class Misspelt(FakeTarget):
            REFUSALS: ClassVar[dict[str, str]] = {"kernel_arg": "no"}


class RawOnlyTarget(FakeTarget):
    IMAGE_FORMATS: ClassVar[frozenset[str] | None] = frozenset({"raw"})
    REFUSALS: ClassVar[dict[str, str]] = {
        "image_format": "{driver} boots raw, not {image_format!r}"
    }


def test_the_format_is_asked_else_the_matrix_s_else_the_driver_s_only_one_else_the_profile_s(
    run: Run,
) -> None:
    local = LocalTarget(run)
    assert local.format_for() == "qcow2"  # the kvm profile's own
    assert local.format_for(PROFILES["virtualbox"]) == "iso"
    local.image_format = "raw"  # matrix.yaml: {name: kvm-b, ..., image_format: raw}
    assert local.format_for() == "raw"
    assert local.format_for(asked="vmdk") == "vmdk"
    local.launch(LOADER)
    assert local.started[-1][1].image_format == "raw"
    raw_only = RawOnlyTarget(run)
    assert raw_only.format_for(PROFILES["kvm"]) == "raw"  # EC2 takes raw whatever the profile
    raw_only.launch(LOADER, profile=PROFILES["virtualbox"])
    assert raw_only.started[-1][1].image_format == "raw"
    with pytest.raises(TargetError, match=r"^RawOnlyTarget boots raw, not 'iso'$"):
        raw_only.launch(LOADER, image_format="iso")
