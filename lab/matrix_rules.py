"""Rules of matrix.yaml that need the lab's knowledge (the suites' check names, each driver's
settings keys), and the located problem that lab.matrix turns into `FILE:LINE:COL` lines."""

import difflib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Loc = tuple[str | int, ...]
"""Where in the tree: keys and list indices from the top, as pydantic reports them."""


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str
    at_key: bool = False  # point at the key itself rather than at its value


def list_at(tree: Any, key: str) -> list[Any]:
    value = tree.get(key) if isinstance(tree, dict) else None
    return value if isinstance(value, list) else []


def unknown_names(
    tree: Any,
    drivers: Mapping[str, Collection[str]],
    checks: Collection[str],
    required_checks: Collection[str],
) -> list[Problem]:
    return [
        *_unknown_check_names(tree, checks, required_checks),
        *_unknown_target_settings(tree, drivers),
    ]


def _unknown_check_names(
    tree: Any, known: Collection[str], required: Collection[str]
) -> Iterator[Problem]:
    checks = tree.get("checks") if isinstance(tree, dict) else None
    if not isinstance(checks, dict):
        return
    for name in checks:
        if isinstance(name, str) and name not in known:  # a name not a string: the schema's
            message = (
                f"unknown check {name!r}{_did_you_mean(name, known)}; the suites' checks are: "
                f"{', '.join(sorted(known))}"
            )
            yield Problem(("checks", name), message, at_key=True)
    for name in sorted(set(required) - set(checks)):
        message = f"check {name!r} is missing; the lab always reads it: add it"
        yield Problem(("checks",), message, at_key=True)


def _unknown_target_settings(
    tree: Any, drivers: Mapping[str, Collection[str]]
) -> Iterator[Problem]:
    for index, target in enumerate(list_at(tree, "targets")):
        driver = target.get("driver") if isinstance(target, dict) else None
        settings = target.get("settings") if isinstance(target, dict) else None
        if not isinstance(driver, str) or driver not in drivers or not isinstance(settings, dict):
            continue
        allowed = drivers[driver]
        for key in settings:
            if isinstance(key, str) and key not in allowed:
                message = (
                    f"unknown setting {key!r} of driver {driver!r}{_did_you_mean(key, allowed)}; "
                    f"it takes: {', '.join(sorted(allowed))}"
                )
                yield Problem(("targets", index, "settings", key), message, at_key=True)


def _did_you_mean(name: object, known: Collection[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
