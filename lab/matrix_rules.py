"""The rules of matrix.yaml beyond its schema: what pydantic cannot see one item at a time.

Repeated target names and versions, a check naming a version the matrix does not list, and
names only the lab knows: the suites' check names and each driver's settings keys (a typo
there once made a remote target boot locally). Each rule returns located Problems, which
lab.matrix reports with the schema's in one `FILE:LINE:COL` list (lab.config).
"""

from collections.abc import Collection, Iterator, Mapping

from lab.config import Document, Problem, did_you_mean, list_at, repeats


def problems(
    document: Document,
    drivers: Mapping[str, Collection[str]],
    checks: Collection[str],
    required_checks: Collection[str],
) -> list[Problem]:
    """Every problem of these rules; ``drivers`` maps a driver's name to its settings keys."""
    return [
        *_duplicate_target_names(document),
        *_duplicate_versions(document),
        *_unknown_check_versions(document),
        *_unknown_check_targets(document),
        *_unknown_check_names(document, checks, required_checks),
        *_unknown_target_settings(document, drivers),
    ]


def _duplicate_target_names(document: Document) -> Iterator[Problem]:
    targets = document.list_at("targets")
    names = [target.get("name") if isinstance(target, dict) else None for target in targets]
    for first, again in repeats(names):
        first_line = document.line(("targets", first, "name"))
        message = f"duplicate target name {names[again]!r}; first defined at line {first_line}"
        yield Problem(("targets", again, "name"), message)


def _duplicate_versions(document: Document) -> Iterator[Problem]:
    versions = document.list_at("versions")
    for first, again in repeats(versions):
        first_line = document.line(("versions", first))
        message = f"duplicate version {versions[again]!r}; first listed at line {first_line}"
        yield Problem(("versions", again), message)


def _unknown_check_versions(document: Document) -> Iterator[Problem]:
    versions = set(map(str, document.list_at("versions")))
    tree = document.tree
    checks = tree.get("checks") if isinstance(tree, dict) else None
    for name, check in (checks or {}).items():
        for place, version in _check_version_names(check):
            if str(version) not in versions:
                message = (
                    f"check {name!r} names version {version!r}, which the top-level "
                    f"`versions:` does not list; add it there or remove it here"
                )
                yield Problem(("checks", name, *place), message)


def _check_version_names(check: object) -> Iterator[tuple[tuple[str | int, ...], object]]:
    """(place in the check, version) of each version a check names: `versions` and `pairs`."""
    if not isinstance(check, dict):
        return
    listed = check.get("versions")
    for index, version in enumerate(listed if isinstance(listed, list) else []):
        yield ("versions", index), version
    pairs = check.get("pairs")
    for index, pair in enumerate(pairs if isinstance(pairs, list) else []):
        for key in ("from", "to"):
            if isinstance(pair, dict) and key in pair:
                yield ("pairs", index, key), pair[key]


def _unknown_check_targets(document: Document) -> Iterator[Problem]:
    tree = document.tree
    targets = tree.get("targets") if isinstance(tree, dict) else None
    names = {
        t["name"] for t in targets or [] if isinstance(t, dict) and isinstance(t.get("name"), str)
    }
    checks = tree.get("checks") if isinstance(tree, dict) else None
    for name, check in (checks or {}).items():
        for key in ("targets", "quick_targets"):
            listed = check.get(key) if isinstance(check, dict) else None
            for index, target in enumerate(listed if isinstance(listed, list) else []):
                if target not in names:
                    message = (
                        f"check {name!r} names target {target!r}, which `targets:` does not "
                        f"define{did_you_mean(target, names)}"
                    )
                    yield Problem(("checks", name, key, index), message)


def _unknown_check_names(
    document: Document, known: Collection[str], required: Collection[str]
) -> Iterator[Problem]:
    tree = document.tree
    checks = tree.get("checks") if isinstance(tree, dict) else None
    if not isinstance(checks, dict):
        return
    for name in checks:
        if isinstance(name, str) and name not in known:  # a name not a string: the schema's
            message = (
                f"unknown check {name!r}{did_you_mean(name, known)}; the suites' checks are: "
                f"{', '.join(sorted(known))}"
            )
            yield Problem(("checks", name), message, at_key=True)
    for name in sorted(set(required) - set(checks)):
        message = f"check {name!r} is missing; the lab always reads it: add it"
        yield Problem(("checks",), message, at_key=True)


def _unknown_target_settings(
    document: Document, drivers: Mapping[str, Collection[str]]
) -> Iterator[Problem]:
    for index, target in enumerate(list_at(document.tree, "targets")):
        driver = target.get("driver") if isinstance(target, dict) else None
        settings = target.get("settings") if isinstance(target, dict) else None
        if not isinstance(driver, str) or driver not in drivers or not isinstance(settings, dict):
            continue
        allowed = drivers[driver]
        for key in settings:
            if isinstance(key, str) and key not in allowed:
                message = (
                    f"unknown setting {key!r} of driver {driver!r}{did_you_mean(key, allowed)}; "
                    f"it takes: {', '.join(sorted(allowed))}"
                )
                yield Problem(("targets", index, "settings", key), message, at_key=True)
