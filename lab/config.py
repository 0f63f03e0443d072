"""The one loader of the lab's YAML files (matrix.yaml, releases.yaml, known-issues.yaml).

Each file is read once, at the edge, and every problem in it is reported at once, one line
each, as ``FILE:LINE:COLUMN: KEY.PATH: what is wrong; what to do``. The pieces:

1. `read()` refuses a file larger than MAX_BYTES (1 MiB; UCVM_MAX_MATRIX_BYTES raises it)
   before parsing it, and parses it with ruamel.yaml's round-trip loader, whose tree remembers
   the line and column of every key and item. A syntax error is located as well.
2. `Document.validate()` checks the tree against a pydantic schema (strictly: `"1"` is not a
   number) and turns each pydantic error into a `Problem`: where in the tree (`loc`) and what
   is wrong in the file's own terms, with "did you mean" for a mistyped key.
3. The file's own rules (duplicates, names the lab must know, files that must exist) add more
   Problems; `Document.messages()` locates them all and puts them in file order.
4. The caller raises its own subclass of ConfigError with those lines (MatrixError,
   ReleaseError, KnownIssuesError), so that a caller can tell which file was wrong.

`load()` does all four for a file whose result is its schema's model. Why one loader: the
three files had three copies of the reading, the locating and the wording, and the copies had
begun to drift apart.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML, CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

MAX_BYTES = 1 << 20
MAX_BYTES_ENV = "UCVM_MAX_MATRIX_BYTES"
"""The size limit of every YAML file the lab reads, checked before parsing."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""What a name in the lab's files may look like: a target, a version, a release tag or a
branch (they end up in pytest ids, resource names and URLs)."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]

Loc = tuple[str | int, ...]
"""Where in the tree: keys and list indices from the top, as pydantic reports them."""

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """One or more problems in one of the lab's files; `str(error)` has one line per problem.
    Each file has its own subclass (MatrixError, ReleaseError, KnownIssuesError)."""

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)

    @property
    def problems(self) -> tuple[str, ...]:
        return self.args

    def __str__(self) -> str:
        return "\n".join(self.args)


@dataclass(frozen=True)
class Problem:
    """One problem at ``loc``; `Document.message()` makes it a located line."""

    loc: Loc
    message: str
    at_key: bool = False  # point at the key itself rather than at its value
    label: str | None = None  # what names the place in the line; None: the key path, "": none


class Schema(BaseModel):
    """The base of every schema of the lab's files: a key the schema does not name is an error."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- reading


def byte_limit(env: Mapping[str, str] | None = None, error: type[ConfigError] = ConfigError) -> int:
    """MAX_BYTES, or what UCVM_MAX_MATRIX_BYTES says (a whole number of bytes, > 0)."""
    value = (os.environ if env is None else env).get(MAX_BYTES_ENV)
    if value is None:
        return MAX_BYTES
    if not value.strip().isdigit() or int(value) < 1:
        raise error(f"{MAX_BYTES_ENV}={value!r}: expected a whole number of bytes (> 0)")
    return int(value)


def read(
    path: Path,
    *,
    error: type[ConfigError] = ConfigError,
    env: Mapping[str, str] | None = None,
    item_key: str = "name",
    yaml_label: str = "YAML",
) -> Document:
    """Read and parse ``path`` once; raise ``error`` if it cannot be read, is larger than the
    limit (byte_limit(env); env None: os.environ) or is not YAML. ``item_key`` names the items
    of a list in key paths (`targets[2] (name 'kvm')`); ``yaml_label`` starts a syntax error's
    line after its position (`FILE:2:13: YAML: mapping values are not allowed here`)."""
    limit = byte_limit(env, error)
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)  # never more: the file may be huge, or endless
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{path}: cannot read the file: {problem}") from problem
    if len(data) > limit:
        raise error(
            f"{path}: larger than {limit:,} bytes, the limit for the lab's YAML files (nothing "
            f"was parsed); shorten it, or raise the limit with {MAX_BYTES_ENV}=BYTES"
        )
    try:
        tree = _loader().load(text)
    except MarkedYAMLError as problem:
        raise error(_yaml_error_message(path, problem, yaml_label)) from problem
    except YAMLError as problem:
        raise error(f"{path}: not valid YAML: {problem}") from problem
    return Document(path, tree, item_key)


def _loader() -> YAML:
    """The round-trip loader, with timestamps kept as the text they are: a schema that wants a
    day parses it and says where a bad one is (ruamel's own constructor raises a bare
    ValueError for 2027-02-30)."""
    yaml = YAML(typ="rt")
    yaml.constructor.add_constructor(
        "tag:yaml.org,2002:timestamp", lambda loader, node: str(loader.construct_scalar(node))
    )
    return yaml


def _yaml_error_message(path: Path, error: MarkedYAMLError, label: str) -> str:
    """ruamel names the problem and, often, what it was in the middle of (the context)."""
    mark = error.problem_mark or error.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    message = f"{where}: {label}: {error.problem or error.context}"
    if error.problem and error.context and error.context_mark:
        message += f" ({error.context} started at line {error.context_mark.line + 1})"
    return message


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Document:
    """A parsed file: its path and its ruamel tree, which knows where each node is."""

    path: Path
    tree: Any
    item_key: str = "name"  # the key that names a list's items in key paths

    def validate(
        self, schema: type[M], *, context: Any = None, strict: bool = True
    ) -> tuple[M | None, list[Problem]]:
        """The tree as ``schema``'s model, or None and a Problem per pydantic error."""
        try:
            return schema.model_validate(self.tree, strict=strict, context=context), []
        except ValidationError as error:
            return None, problems_from(error, schema)

    def position(self, loc: Loc, at_key: bool = False) -> tuple[int, int]:
        """1-based line and column of the node at `loc`, or of the deepest part of it that exists.

        A missing key is thus reported at the mapping that lacks it. An empty value
        is reported at its key: ruamel places an empty value where the next token starts.
        """
        line, column = 0, 0
        node = self.tree
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

    def line(self, loc: Loc) -> int:
        """The line of the node at ``loc`` (for "first defined at line N")."""
        return self.position(loc)[0]

    def where(self, loc: Loc, at_key: bool = False) -> str:
        """`FILE:LINE:COLUMN` of the node at ``loc``."""
        line, column = self.position(loc, at_key)
        return f"{self.path}:{line}:{column}"

    def key_path(self, loc: Loc) -> str:
        """`targets[2] (name 'vmware').profile` for ("targets", 2, "profile")."""
        text = ""
        node = self.tree
        for part in loc:
            if isinstance(node, list) and isinstance(part, int):
                node = node[part] if part < len(node) else None
                text += f"[{part}]{self._item_note(node)}"
            else:
                node = node.get(part) if isinstance(node, dict) else None
                text += f".{part}" if text else str(part)
        return text or "(top level)"

    def _item_note(self, item: Any) -> str:
        name = item.get(self.item_key) if isinstance(item, dict) else None
        return f" ({self.item_key} {name!r})" if isinstance(name, str) else ""

    def message(self, problem: Problem) -> str:
        """`FILE:LINE:COLUMN: KEY.PATH: what is wrong; what to do`."""
        label = self.key_path(problem.loc) if problem.label is None else problem.label
        where = self.where(problem.loc, problem.at_key)
        return f"{where}: {label}: {problem.message}" if label else f"{where}: {problem.message}"

    def messages(self, problems: Iterable[Problem]) -> list[str]:
        """One line per problem, in the order they appear in the file."""
        in_file_order = sorted(problems, key=lambda p: self.position(p.loc, p.at_key))
        return [self.message(problem) for problem in in_file_order]

    def list_at(self, key: str) -> list[Any]:
        """The list under the top-level ``key``; [] if there is none (the schema says so)."""
        return list_at(self.tree, key)


Rule = Callable[[Document], Iterable[Problem | str]]
"""A file's own check beyond its schema: Problems to locate, or lines already located (about
another file, e.g. a shopping list's `LIST:LINE: ...`), which follow the located ones."""


def load(
    path: Path,
    schema: type[M],
    *,
    error: type[ConfigError],
    rules: Iterable[Rule] = (),
    context: Any = None,
    env: Mapping[str, str] | None = None,
    item_key: str = "name",
    yaml_label: str = "YAML",
) -> M:
    """Read ``path``, validate it with ``schema`` and ``rules``, and return the model; raise
    ``error`` with every problem, in file order, if there is any."""
    document = read(path, error=error, env=env, item_key=item_key, yaml_label=yaml_label)
    model, problems = document.validate(schema, context=context)
    elsewhere: list[str] = []
    for rule in rules:
        for found in rule(document):
            if isinstance(found, Problem):
                problems.append(found)
            else:
                elsewhere.append(found)
    messages = [*document.messages(problems), *elsewhere]
    if model is None or messages:
        raise error(*messages)
    return model


# --------------------------------------------------------------------------- pydantic's errors


def problems_from(error: ValidationError, schema: type[BaseModel]) -> list[Problem]:
    """A Problem for each of pydantic's errors in validating ``schema``."""
    return [problem_from(detail, schema) for detail in error.errors()]


def problem_from(error: ErrorDetails, schema: type[BaseModel]) -> Problem:
    loc = tuple(error["loc"])
    if loc[-1:] == ("[key]",):  # the key of a mapping is wrong, not its value
        return Problem(loc[:-1], f"invalid key: {explain(error, schema)}", at_key=True)
    return Problem(loc, explain(error, schema), at_key=error["type"] == "extra_forbidden")


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


def explain(error: ErrorDetails, schema: type[BaseModel]) -> str:
    """One pydantic error in the file's terms; ``schema`` (the one validated) lists the keys
    allowed beside an unknown one."""
    if error["type"] == "extra_forbidden":
        key = error["loc"][-1]
        allowed = list(schema_at(schema, error["loc"][:-1]).model_fields)
        return (
            f"unknown key {key!r}{did_you_mean(key, allowed)}; allowed keys: {', '.join(allowed)}"
        )
    found = describe(error["input"])
    template = _EXPECTATIONS.get(error["type"])
    if template is None:
        return f"{error['msg']}; found {found}"
    message = template.format(found=found, **error.get("ctx", {}))
    if error["type"] == "string_type" and isinstance(error["input"], int | float):
        message += " (put it in quotes to make it a string)"
    return message


def schema_at(schema: type[BaseModel], loc: Loc) -> type[BaseModel]:
    """The model of the mapping at ``loc`` in a tree of ``schema`` (through lists, dicts and
    optional values), e.g. the target schema for ("targets", 2)."""
    kind: Any = schema
    for part in loc:
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            kind = kind.model_fields[str(part)].annotation
        elif get_origin(kind) is list:
            kind = get_args(kind)[0]
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        else:
            raise LookupError(f"{schema.__name__} has no mapping at {loc}")
    kind = _unwrap(kind)
    if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
        raise LookupError(f"{schema.__name__} has no mapping at {loc}")
    return kind


def _unwrap(kind: Any) -> Any:
    """`Annotated[X, ...]` and `X | None` as X."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
        elif origin in (Union, types.UnionType):
            kind = next(arg for arg in get_args(kind) if arg is not type(None))
        else:
            return kind


def describe(value: Any) -> str:
    """A value as the file shows it: `string '1.0'`, `number 1.0`, `nothing (null)`."""
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


# --------------------------------------------------------------------------- small helpers


def did_you_mean(name: object, known: Collection[str]) -> str:
    """` (did you mean boot?)` for a name close to one of ``known``, else ""."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def list_at(tree: Any, key: str) -> list[Any]:
    """The list under ``key`` of a mapping; [] if there is none (the schema says so)."""
    value = tree.get(key) if isinstance(tree, dict) else None
    return value if isinstance(value, list) else []


def repeats(values: Iterable[Any]) -> Iterator[tuple[int, int]]:
    """(index of the first occurrence, index of a repeat) for each repeated string."""
    first_index: dict[str, int] = {}
    for index, value in enumerate(values):
        if not isinstance(value, str):
            continue
        if value in first_index:
            yield first_index[value], index
        else:
            first_index[value] = index
