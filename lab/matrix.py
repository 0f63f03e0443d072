"""Load and validate matrix.yaml, and expand it into cells (target x version).

The file is read once, here, at the edge, through lab.config (the lab's one YAML loader);
nothing else in the lab parses it. Loading happens in four steps:

1. lab.config reads the file (at most 1 MiB; UCVM_MAX_MATRIX_BYTES raises it) into a tree
   that remembers the line and column of every key and item. A matrix may hold at most
   MAX_TARGETS targets.
2. pydantic checks the shape and types of the tree (strictly: `"1"` is not a number), and
   the matrix's own rules (lab.matrix_rules) look for duplicates across items and for names
   the lab does not know: check names (the suites'), each driver's settings keys; the run
   root (lab.runroot) and the known-issues file are checked here.
3. Every `settings:` key may be overridden by an environment variable
   `UCVM_<KEY>`; those strings are converted to the key's type. An empty variable
   is an error, not "unset".
4. Every problem found is reported at once, one line each, as
   `FILE:LINE:COLUMN: KEY.PATH: what is wrong; what was expected`.
   Only when there is none are the result dataclasses built.
"""

import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from lab import config, matrix_rules, runroot
from lab.config import Document, Name, Problem, Schema

ENV_PREFIX = "UCVM_"
"""`UCVM_ACCEL=tcg` overrides `settings: accel:`."""

MAX_TARGETS = 1000
"""Checked before the tree is validated: validation grows with the size."""


# --------------------------------------------------------------------------- the result


class MatrixError(config.ConfigError):
    """One or more problems in a matrix; `str(error)` has one line per problem."""


@dataclass(frozen=True)
class Settings:
    accel: str  # "auto" | "kvm" | "tcg"
    libvirt_uri: str
    run_root: Path
    reports: Path  # absolute, resolved relative to the matrix file's directory
    boot_budget_s: float
    scratch_gb: float


@dataclass(frozen=True)
class Target:
    name: str
    driver: str
    profile: str
    tier: int  # 1, 2 or 3
    evidence: str  # "profile" (a profile run) | "real" (the real platform)
    image_format: str | None  # None: the profile's own format
    # Driver settings such as {"uri": "xen:///system"}. A dict cannot be hashed,
    # so it is left out of the hash (targets still compare equal by all fields).
    settings: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    budget_mb: float | None = None
    versions: tuple[str, ...] | None = None  # None: every version of the matrix
    boot_budget_s: float | None = None  # None: settings.boot_budget_s
    pairs: tuple[tuple[str, str], ...] = ()  # rebase: (from, to) version pairs, each a cell
    targets: tuple[str, ...] | None = None  # None: every target of the matrix
    quick_targets: tuple[str, ...] | None = None  # None: all of them in the quick run

    def covers(self, version: str) -> bool:
        return self.versions is None or version in self.versions

    def sources_of(self, version: str) -> list[str]:
        """The versions a rebase cell of ``version`` starts from."""
        return [source for source, dest in self.pairs if dest == version]

    def covers_target(self, name: str) -> bool:
        return self.targets is None or name in self.targets

    def nightly_only(self, name: str) -> bool:
        """A cell the default test run leaves to the nightly (quick_targets names the others)."""
        return self.quick_targets is not None and name not in self.quick_targets


GATE_FIGURES = (
    "ready_s", "guest_ready_s", "fetched_bytes", "cache_bytes", "units_failed",
    "cloud_init_warnings", "image_bytes",
)  # fmt: skip
"""The figures a gate budget (``max_ratio``) may name, besides ``phase_s.NAME`` (a phase's
seconds): lab/evidence.py's boot figures, and the boot loader image's compressed bytes."""
PHASE_FIGURE_PREFIX = "phase_s."


@dataclass(frozen=True)
class Gate:
    required_tiers: tuple[int, ...]
    allow_known_issues: bool
    known_issues: Path  # absolute, resolved relative to the matrix file's directory
    baseline_branch: str = "prod"  # the default baseline: this branch's newest gated release
    candidate_branch: str = "testing"  # where `ucvm-lab release candidate` publishes
    min_boots: int = 3  # boots per side and cell whose median the ratios compare
    max_ratio: Mapping[str, float] = field(default_factory=dict, hash=False)  # figure: ratio
    flaky_is_pass: bool = False  # a cell that failed, then passed its retry, counts as a pass


@dataclass(frozen=True)
class Cell:
    """One target booting one version: the unit the suites are parametrised over."""

    target: Target
    version: str
    side: str | None = None  # a gate run: candidate or baseline (lab.evidence.SIDES)
    round: int = 0  # a gate run: which of the side's boots of this cell

    @property
    def id(self) -> str:
        gate = f"-{self.side}{self.round}" if self.side else ""
        return f"{self.target.name}-{self.version}{gate}"


@dataclass(frozen=True)
class Matrix:
    path: Path
    settings: Settings
    targets: tuple[Target, ...]
    versions: tuple[str, ...]
    checks: dict[str, Check] = field(hash=False)
    gate: Gate

    def cells(self, only: Iterable[str] | None = None) -> list[Cell]:
        """Every target x every version, in file order; `only` keeps the named targets."""
        targets = self.targets if only is None else self._select(only)
        return [Cell(target, version) for target in targets for version in self.versions]

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise MatrixError(self._unknown_target(name))

    def _select(self, names: Iterable[str]) -> tuple[Target, ...]:
        if isinstance(names, str):
            raise TypeError("only= takes a collection of target names, not one string")
        wanted = set(names)
        unknown = sorted(wanted - {target.name for target in self.targets})
        if unknown:
            raise MatrixError(*(self._unknown_target(name) for name in unknown))
        return tuple(target for target in self.targets if target.name in wanted)

    def _unknown_target(self, name: str) -> str:
        known = ", ".join(target.name for target in self.targets)
        return f"{self.path}: unknown target {name!r}; known targets: {known}"


# --------------------------------------------------------------------------- the schema


def _check_tier(tier: int) -> int:
    if tier not in (1, 2, 3):
        raise ValueError(f"expected a tier: 1, 2 or 3; found {tier}")
    return tier


Tier = Annotated[int, AfterValidator(_check_tier)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _check_run_root(root: str) -> str:
    found = runroot.problem(root)
    if found:
        raise ValueError(found)
    return root


RunRoot = Annotated[str, AfterValidator(_check_run_root)]


class _SettingsSchema(Schema):
    accel: Literal["auto", "kvm", "tcg"]
    libvirt_uri: str
    run_root: RunRoot
    reports: str
    boot_budget_s: PositiveNumber
    scratch_gb: PositiveNumber


class _TargetSchema(Schema):
    name: Name
    driver: str
    profile: str
    tier: Tier
    evidence: Literal["profile", "real"] = "profile"
    image_format: str | None = None
    settings: dict[str, str] = Field(default_factory=dict)

    @field_validator("driver", "profile", "image_format")
    @classmethod
    def _known_to_the_lab(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The allowed drivers, profiles and formats come from the caller (the context)."""
        assert info.context is not None, "load() always validates with the lab's choices"
        allowed = info.context[info.field_name]
        if value is None or value in allowed:
            return value
        expected = ", ".join(sorted(allowed))
        raise ValueError(f"unknown {info.field_name} {value!r}; expected one of: {expected}")

    @field_validator("settings")
    @classmethod
    def _one_source_of_uri(cls, settings: dict[str, str]) -> dict[str, str]:
        if "uri" in settings and "uri_env" in settings:
            raise ValueError("give either uri or uri_env, not both")
        return settings


class _PairSchema(Schema):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: Name = Field(alias="from")
    to: Name


class _CheckSchema(Schema):
    description: str
    budget_mb: PositiveNumber | None = None
    versions: Annotated[list[Name], Field(min_length=1)] | None = None
    boot_budget_s: PositiveNumber | None = None
    pairs: Annotated[list[_PairSchema], Field(min_length=1)] | None = None
    targets: Annotated[list[Name], Field(min_length=1)] | None = None
    quick_targets: list[Name] | None = None


def _gate_figure(name: str) -> str:
    phase = name.removeprefix(PHASE_FIGURE_PREFIX)
    if name in GATE_FIGURES or (name.startswith(PHASE_FIGURE_PREFIX) and phase):
        return name
    expected = ", ".join(GATE_FIGURES)
    raise ValueError(f"unknown figure {name!r}; expected one of: {expected}, or phase_s.PHASE")


def _over_one(ratio: float) -> float:
    if ratio < 1:
        raise ValueError(
            f"a ratio of candidate to baseline, at least 1 (1.25: 25% worse is allowed); "
            f"found {ratio}"
        )
    return ratio


GateFigure = Annotated[str, AfterValidator(_gate_figure)]
Ratio = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_over_one)]


class _GateSchema(Schema):
    required_tiers: list[Tier]
    allow_known_issues: bool
    known_issues: str
    baseline_branch: Name = "prod"
    candidate_branch: Name = "testing"
    min_boots: Annotated[int, Field(ge=1, le=20)] = 3
    max_ratio: dict[GateFigure, Ratio] = Field(default_factory=dict)
    flaky_is_pass: bool = False


class _MatrixSchema(Schema):
    settings: _SettingsSchema
    versions: Annotated[list[Name], Field(min_length=1)]
    checks: dict[str, _CheckSchema]
    targets: Annotated[list[_TargetSchema], Field(min_length=1)]
    gate: _GateSchema


# --------------------------------------------------------------------------- loading


def load(
    path: Path,
    *,
    profiles: Collection[str],
    drivers: Mapping[str, Collection[str]],
    image_formats: Collection[str],
    checks: Collection[str],
    required_checks: Collection[str] = (),
    env: Mapping[str, str] | None = None,
) -> Matrix:
    """Read, validate and resolve a matrix file; raise MatrixError listing every problem.

    ``drivers`` maps each driver's name to the settings keys it takes; ``checks`` are the
    suites' check names, ``required_checks`` those the lab reads whatever the matrix says."""
    environment = os.environ if env is None else env
    document = config.read(path, error=MatrixError, env=environment)
    _refuse_too_many_targets(document)
    choices = {"profile": profiles, "driver": drivers, "image_format": image_formats}
    schema, problems = document.validate(_MatrixSchema, context=choices)
    problems += matrix_rules.problems(document, drivers, checks, required_checks)
    problems += _missing_files(document)
    settings, override_messages = _settings_with_overrides(document.tree, environment)
    messages = [*document.messages(problems), *override_messages]
    if schema is None or settings is None or messages:
        raise MatrixError(*messages)
    return _build_matrix(path, schema, settings, environment)


def _refuse_too_many_targets(document: Document) -> None:
    count = len(document.list_at("targets"))
    if count > MAX_TARGETS:
        raise MatrixError(
            f"{document.where(('targets',), at_key=True)}: targets: {count:,} targets; a matrix "
            f"takes at most {MAX_TARGETS:,}: split it into several matrix files (--matrix)"
        )


def _missing_files(document: Document) -> Iterator[Problem]:
    tree = document.tree
    gate = tree.get("gate") if isinstance(tree, dict) else None
    named = gate.get("known_issues") if isinstance(gate, dict) else None
    if isinstance(named, str) and not _beside(document.path, named).is_file():
        message = (
            f"{_beside(document.path, named)} is not a file; create it (empty: no known issues) "
            "or name the right one (relative to this file)"
        )
        yield Problem(("gate", "known_issues"), message)


# --------------------------------------------------------------------------- environment overrides


def _env_variable(setting: str) -> str:
    return f"{ENV_PREFIX}{setting.upper()}"


def _settings_with_overrides(
    tree: Any, env: Mapping[str, str]
) -> tuple[_SettingsSchema | None, list[str]]:
    """The file's settings with UCVM_<KEY> variables applied, and a message per bad variable.

    The file's own values were checked strictly already; this validation is lax
    so that the variables' strings are converted ("60" -> 60.0). Problems with
    the file's values are left to the strict check; only the variables' are reported.
    """
    overrides = {
        key: env[_env_variable(key)]
        for key in _SettingsSchema.model_fields
        if _env_variable(key) in env
    }
    empty = [_empty_override_message(key) for key, value in overrides.items() if not value.strip()]
    overrides = {key: value for key, value in overrides.items() if value.strip()}
    in_file = tree.get("settings") if isinstance(tree, dict) else None
    merged = {**in_file, **overrides} if isinstance(in_file, dict) else overrides
    try:
        return _SettingsSchema.model_validate(merged, strict=False), empty
    except ValidationError as error:
        details = [detail for detail in error.errors() if detail["loc"][0] in overrides]
        return None, empty + [_override_message(detail, overrides) for detail in details]


def _empty_override_message(key: str) -> str:
    variable = _env_variable(key)
    return (
        f"{variable} is set but empty (overrides settings.{key}): an empty variable is an "
        f"error, not unset; give it a value, or unset it (`unset {variable}`, or "
        f"`env -u {variable} ucvm-lab ...`) to use the file's settings.{key}"
    )


def _override_message(error: ErrorDetails, overrides: Mapping[str, str]) -> str:
    key = str(error["loc"][0])
    value = overrides[key]
    why = config.explain(error, _SettingsSchema)
    return f"{_env_variable(key)}={value!r} (overrides settings.{key}): {why}"


# --------------------------------------------------------------------------- building the result


def _check_versions(check: _CheckSchema) -> tuple[str, ...] | None:
    """The versions a check covers: its `versions`, else the `to` of its pairs, else all."""
    if check.versions:
        return tuple(check.versions)
    if check.pairs:
        return tuple(dict.fromkeys(pair.to for pair in check.pairs))
    return None


def _build_matrix(
    path: Path, schema: _MatrixSchema, settings: _SettingsSchema, env: Mapping[str, str]
) -> Matrix:
    return Matrix(
        path=path,
        settings=_build_settings(path, settings),
        targets=tuple(_build_target(target, env) for target in schema.targets),
        versions=tuple(schema.versions),
        checks={
            name: Check(
                name,
                check.description,
                check.budget_mb,
                _check_versions(check),
                check.boot_budget_s,
                tuple((pair.source, pair.to) for pair in check.pairs or ()),
                tuple(check.targets) if check.targets else None,
                tuple(check.quick_targets) if check.quick_targets is not None else None,
            )
            for name, check in schema.checks.items()
        },
        gate=Gate(
            required_tiers=tuple(schema.gate.required_tiers),
            allow_known_issues=schema.gate.allow_known_issues,
            known_issues=_beside(path, schema.gate.known_issues),
            baseline_branch=schema.gate.baseline_branch,
            candidate_branch=schema.gate.candidate_branch,
            min_boots=schema.gate.min_boots,
            max_ratio=dict(schema.gate.max_ratio),
            flaky_is_pass=schema.gate.flaky_is_pass,
        ),
    )


def _build_settings(path: Path, settings: _SettingsSchema) -> Settings:
    return Settings(
        accel=settings.accel,
        libvirt_uri=settings.libvirt_uri,
        run_root=Path(settings.run_root),
        reports=_beside(path, settings.reports),
        boot_budget_s=settings.boot_budget_s,
        scratch_gb=settings.scratch_gb,
    )


def _build_target(target: _TargetSchema, env: Mapping[str, str]) -> Target:
    return Target(
        name=target.name,
        driver=target.driver,
        profile=target.profile,
        tier=target.tier,
        evidence=target.evidence,
        image_format=target.image_format,
        settings=_resolve_uri_env(target.settings, env),
    )


def _resolve_uri_env(settings: dict[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """`uri_env: NAME` takes the uri from $NAME; unset, the target is marked unavailable."""
    variable = settings.get("uri_env")
    if variable is None:
        return dict(settings)
    uri = env.get(variable)
    if uri:
        return {**settings, "uri": uri}
    return {**settings, "unavailable": f"environment variable {variable} is not set"}


def _beside(matrix_path: Path, relative: str) -> Path:
    """A path named in the matrix, relative to the matrix file's directory."""
    return (matrix_path.parent / relative).resolve()
