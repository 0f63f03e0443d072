"""Load and validate matrix.yaml, and expand it into cells (target x version).

The file is read once, here, at the edge; nothing else in the lab parses it.
Loading happens in four steps:

1. ruamel.yaml parses the text into a tree that remembers the line and column
   of every key and item (`node.lc`). The file may hold at most MAX_BYTES (1 MiB;
   UCVM_MAX_MATRIX_BYTES raises it), checked before parsing, and MAX_TARGETS targets.
2. pydantic checks the shape and types of the tree (strictly: `"1"` is not a
   number), and a few plain checks look for duplicates across items and for
   names the lab does not know: check names (the suites'), each driver's settings
   keys, the run root (lab.runroot) and the known-issues file.
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
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML, CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from lab import runroot
from lab.matrix_rules import Loc, unknown_names
from lab.matrix_rules import Problem as _Problem  # lab.build.rootfs uses matrix._Problem
from lab.matrix_rules import list_at as _list_at

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""What a target name or a version may look like (both end up in pytest ids)."""

ENV_PREFIX = "UCVM_"
"""`UCVM_ACCEL=tcg` overrides `settings: accel:`."""

MAX_BYTES = 1 << 20
MAX_BYTES_ENV = "UCVM_MAX_MATRIX_BYTES"
MAX_TARGETS = 1000
"""Limits checked before the tree is validated: parsing and validation grow with the size."""


# --------------------------------------------------------------------------- the result


class MatrixError(ValueError):
    """One or more problems in a matrix; `str(error)` has one line per problem."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)

    @property
    def problems(self) -> tuple[str, ...]:
        return self.args

    def __str__(self) -> str:
        return "\n".join(self.args)


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

    def covers(self, version: str) -> bool:
        return self.versions is None or version in self.versions


@dataclass(frozen=True)
class Gate:
    required_tiers: tuple[int, ...]
    allow_known_issues: bool
    known_issues: Path  # absolute, resolved relative to the matrix file's directory


@dataclass(frozen=True)
class Cell:
    """One target booting one version: the unit the suites are parametrised over."""

    target: Target
    version: str

    @property
    def id(self) -> str:
        return f"{self.target.name}-{self.version}"


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


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Tier = Annotated[int, AfterValidator(_check_tier)]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _check_run_root(root: str) -> str:
    found = runroot.problem(root)
    if found:
        raise ValueError(found)
    return root


RunRoot = Annotated[str, AfterValidator(_check_run_root)]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SettingsSchema(_Schema):
    accel: Literal["auto", "kvm", "tcg"]
    libvirt_uri: str
    run_root: RunRoot
    reports: str
    boot_budget_s: PositiveNumber
    scratch_gb: PositiveNumber


class _TargetSchema(_Schema):
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


class _CheckSchema(_Schema):
    description: str
    budget_mb: PositiveNumber | None = None
    versions: Annotated[list[Name], Field(min_length=1)] | None = None
    boot_budget_s: PositiveNumber | None = None


class _GateSchema(_Schema):
    required_tiers: list[Tier]
    allow_known_issues: bool
    known_issues: str


class _MatrixSchema(_Schema):
    settings: _SettingsSchema
    versions: Annotated[list[Name], Field(min_length=1)]
    checks: dict[str, _CheckSchema]
    targets: Annotated[list[_TargetSchema], Field(min_length=1)]
    gate: _GateSchema


_SECTION_SCHEMAS: dict[str, type[_Schema]] = {
    "settings": _SettingsSchema,
    "checks": _CheckSchema,
    "targets": _TargetSchema,
    "gate": _GateSchema,
}
"""The schema of the mappings one level below each top-level key."""


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
    tree = _read_yaml(path, _byte_limit(environment))
    _refuse_too_many_targets(path, tree)
    choices = {"profile": profiles, "driver": drivers, "image_format": image_formats}
    schema, problems = _validate_schema(tree, choices)
    problems += _duplicate_problems(tree)
    problems += unknown_names(tree, drivers, checks, required_checks)
    problems += _missing_files(path, tree)
    settings, override_messages = _settings_with_overrides(tree, environment)
    messages = [*_file_messages(path, tree, problems), *override_messages]
    if schema is None or settings is None or messages:
        raise MatrixError(*messages)
    return _build_matrix(path, schema, settings, environment)


def _byte_limit(env: Mapping[str, str]) -> int:
    value = env.get(MAX_BYTES_ENV)
    if value is None:
        return MAX_BYTES
    if not value.strip().isdigit() or int(value) < 1:
        raise MatrixError(f"{MAX_BYTES_ENV}={value!r}: expected a whole number of bytes (> 0)")
    return int(value)


def _read_yaml(path: Path, limit: int = MAX_BYTES) -> Any:
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)  # never more: the file may be huge, or endless
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MatrixError(f"{path}: cannot read the file: {error}") from error
    if len(data) > limit:
        raise MatrixError(
            f"{path}: larger than {limit:,} bytes, the limit for the lab's YAML files (nothing "
            f"was parsed); shorten it, or raise the limit with {MAX_BYTES_ENV}=BYTES"
        )
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as error:
        raise MatrixError(_yaml_error_message(path, error)) from error
    except YAMLError as error:
        raise MatrixError(f"{path}: not valid YAML: {error}") from error


def _yaml_error_message(path: Path, error: MarkedYAMLError) -> str:
    """ruamel names the problem and, often, what it was in the middle of (the context)."""
    mark = error.problem_mark or error.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    message = f"{where}: YAML: {error.problem or error.context}"
    if error.problem and error.context and error.context_mark:
        message += f" ({error.context} started at line {error.context_mark.line + 1})"
    return message


# --------------------------------------------------------------------------- problems


def _validate_schema(
    tree: Any, choices: Mapping[str, Collection[str]]
) -> tuple[_MatrixSchema | None, list[_Problem]]:
    try:
        return _MatrixSchema.model_validate(tree, strict=True, context=choices), []
    except ValidationError as error:
        return None, [_problem_from_pydantic(detail) for detail in error.errors()]


def _problem_from_pydantic(error: ErrorDetails) -> _Problem:
    loc = tuple(error["loc"])
    if loc[-1:] == ("[key]",):  # the key of a mapping is wrong, not its value
        return _Problem(loc[:-1], f"invalid key: {_explain(error)}", at_key=True)
    return _Problem(loc, _explain(error), at_key=error["type"] == "extra_forbidden")


_EXPECTATIONS = {
    "missing": "required key is missing",
    "string_type": "expected a string; found {found}",
    "int_type": "expected an integer; found {found}",
    "int_parsing": "expected an integer; found {found}",
    "float_type": "expected a number; found {found}",
    "float_parsing": "expected a number; found {found}",
    "bool_type": "expected true or false; found {found}",
    "bool_parsing": "expected true or false; found {found}",
    "list_type": "expected a list; found {found}",
    "dict_type": "expected a mapping; found {found}",
    "model_type": "expected a mapping; found {found}",
    "literal_error": "expected one of {expected}; found {found}",
    "string_pattern_mismatch": "expected a name matching {pattern}; found {found}",
    "too_short": "expected at least {min_length} item(s); found {actual_length}",
    "greater_than": "expected a number greater than {gt:g}; found {found}",
    "finite_number": "expected a finite number; found {found}",
    "value_error": "{error}",
}
"""What each kind of pydantic error means here, in the file's own terms."""


def _explain(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_schema_at(error["loc"]).model_fields)
        return f"unknown key {error['loc'][-1]!r}; allowed keys: {allowed}"
    found = _describe_value(error["input"])
    template = _EXPECTATIONS.get(error["type"])
    if template is None:
        return f"{error['msg']}; found {found}"
    message = template.format(found=found, **error.get("ctx", {}))
    if error["type"] == "string_type" and isinstance(error["input"], int | float):
        message += " (put it in quotes to make it a string)"
    return message


def _schema_at(loc: Loc) -> type[_Schema]:
    """The schema of the mapping that holds the key at `loc`."""
    if len(loc) == 1:
        return _MatrixSchema
    return _SECTION_SCHEMAS[str(loc[0])]


def _describe_value(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _refuse_too_many_targets(path: Path, tree: Any) -> None:
    count = len(_list_at(tree, "targets"))
    if count > MAX_TARGETS:
        line, column = _position(tree, ("targets",), at_key=True)
        raise MatrixError(
            f"{path}:{line}:{column}: targets: {count:,} targets; a matrix takes at most "
            f"{MAX_TARGETS:,}: split it into several matrix files (--matrix)"
        )


def _duplicate_problems(tree: Any) -> list[_Problem]:
    return [
        *_duplicate_target_names(tree),
        *_duplicate_versions(tree),
        *_unknown_check_versions(tree),
    ]


def _duplicate_target_names(tree: Any) -> Iterator[_Problem]:
    targets = _list_at(tree, "targets")
    names = [target.get("name") if isinstance(target, dict) else None for target in targets]
    for first, again in _repeats(names):
        first_line = _position(tree, ("targets", first, "name"))[0]
        message = f"duplicate target name {names[again]!r}; first defined at line {first_line}"
        yield _Problem(("targets", again, "name"), message)


def _duplicate_versions(tree: Any) -> Iterator[_Problem]:
    versions = _list_at(tree, "versions")
    for first, again in _repeats(versions):
        first_line = _position(tree, ("versions", first))[0]
        message = f"duplicate version {versions[again]!r}; first listed at line {first_line}"
        yield _Problem(("versions", again), message)


def _unknown_check_versions(tree: Any) -> Iterator[_Problem]:
    versions = set(map(str, _list_at(tree, "versions")))
    checks = tree.get("checks") if isinstance(tree, dict) else None
    for name, check in (checks or {}).items():
        listed = check.get("versions") if isinstance(check, dict) else None
        for index, version in enumerate(listed if isinstance(listed, list) else []):
            if str(version) not in versions:
                message = (
                    f"check {name!r} names version {version!r}, which the top-level "
                    f"`versions:` does not list; add it there or remove it here"
                )
                yield _Problem(("checks", name, "versions", index), message)


def _missing_files(path: Path, tree: Any) -> Iterator[_Problem]:
    gate = tree.get("gate") if isinstance(tree, dict) else None
    named = gate.get("known_issues") if isinstance(gate, dict) else None
    if isinstance(named, str) and not _beside(path, named).is_file():
        message = (
            f"{_beside(path, named)} is not a file; create it (empty: no known issues) "
            "or name the right one (relative to this file)"
        )
        yield _Problem(("gate", "known_issues"), message)


def _repeats(values: list[Any]) -> Iterator[tuple[int, int]]:
    """(index of the first occurrence, index of a repeat) for each repeated string."""
    first_index: dict[str, int] = {}
    for index, value in enumerate(values):
        if not isinstance(value, str):
            continue
        if value in first_index:
            yield first_index[value], index
        else:
            first_index[value] = index


# --------------------------------------------------------------------------- locating problems


def _file_messages(path: Path, tree: Any, problems: list[_Problem]) -> list[str]:
    """One line per problem, in the order they appear in the file."""
    in_file_order = sorted(
        problems, key=lambda problem: _position(tree, problem.loc, problem.at_key)
    )
    return [_file_message(path, tree, problem) for problem in in_file_order]


def _file_message(path: Path, tree: Any, problem: _Problem) -> str:
    line, column = _position(tree, problem.loc, problem.at_key)
    return f"{path}:{line}:{column}: {_key_path(tree, problem.loc)}: {problem.message}"


def _position(tree: Any, loc: Loc, at_key: bool = False) -> tuple[int, int]:
    """1-based line and column of the node at `loc`, or of the deepest part of it that exists.

    A missing key is thus reported at the mapping that lacks it. An empty value
    is reported at its key: ruamel places an empty value where the next token starts.
    """
    line, column = 0, 0
    node = tree
    for depth, part in enumerate(loc):
        is_last = depth == len(loc) - 1
        if isinstance(node, CommentedMap) and part in node:
            use_key = (at_key and is_last) or node[part] is None
            line, column = node.lc.key(part) if use_key else node.lc.value(part)
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line, column = node.lc.item(part)
        else:
            break
        node = node[part]
    return line + 1, column + 1


def _key_path(tree: Any, loc: Loc) -> str:
    """`targets[2] (name 'vmware').profile` for ("targets", 2, "profile")."""
    text = ""
    node = tree
    for part in loc:
        if isinstance(node, list) and isinstance(part, int):
            node = node[part] if part < len(node) else None
            text += f"[{part}]{_name_note(node)}"
        else:
            node = node.get(part) if isinstance(node, dict) else None
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _name_note(item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f" (name {name!r})" if isinstance(name, str) else ""


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
    return f"{_env_variable(key)}={value!r} (overrides settings.{key}): {_explain(error)}"


# --------------------------------------------------------------------------- building the result


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
                tuple(check.versions) if check.versions else None,
                check.boot_budget_s,
            )
            for name, check in schema.checks.items()
        },
        gate=Gate(
            required_tiers=tuple(schema.gate.required_tiers),
            allow_known_issues=schema.gate.allow_known_issues,
            known_issues=_beside(path, schema.gate.known_issues),
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
