"""The Allure HTML report, made by the npm package ``allure`` (v3) as one self-contained file.

Command: ``allure allure2 <results-dir>... --output <out_dir> --single-file --report-name <name>``
with ``ALLURE_NO_ANALYTICS=true``. ``allure generate`` has no single-file option (a multi-file
report does not render from file://), and ``allure awesome --single-file`` embeds a Google
Analytics tag that no option removes; the ``allure2`` (classic-looking) plugin honours
``ALLURE_NO_ANALYTICS``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lab import proc

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ALLURE_BIN = REPO_ROOT / "node_modules" / ".bin" / "allure"
TIMEOUT_S = 300


class AllureError(RuntimeError):
    """The allure CLI is missing or failed."""


def generate_html(
    results_dirs: Sequence[Path],
    out_dir: Path,
    *,
    allure_bin: Path | None = None,
    report_name: str = "ucvm-lab",
) -> Path:
    """Generate a single-file report of all ``results_dirs`` (merged) in ``out_dir``.

    Returns the path of ``out_dir/index.html``.
    """
    binary = allure_bin or DEFAULT_ALLURE_BIN
    if not binary.is_file():
        raise AllureError(
            f"the Allure report generator is not installed ({binary} is missing): "
            "run scripts/setup.sh (it installs the npm package allure@3)"
        )
    missing = [str(d) for d in results_dirs if not d.is_dir()]
    if not results_dirs or missing:
        raise AllureError(f"no allure-results directory to report on: {', '.join(missing) or '-'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    _run(allure_command(binary, results_dirs, out_dir, report_name), cwd=out_dir)
    index = out_dir / "index.html"
    if not index.is_file():
        raise AllureError(f"allure finished but wrote no {index}")
    return index


def allure_command(
    binary: Path, results_dirs: Sequence[Path], out_dir: Path, report_name: str
) -> list[str]:
    """The command line; paths are absolute because allure runs in ``out_dir``."""
    return [
        str(binary),
        "allure2",
        *(str(d.resolve()) for d in results_dirs),
        "--output",
        str(out_dir.resolve()),
        "--single-file",
        "--report-name",
        report_name,
    ]


def _run(command: list[str], *, cwd: Path) -> None:
    env = {**os.environ, "ALLURE_NO_ANALYTICS": "true", "NO_COLOR": "1"}
    try:
        proc.run(*command, cwd=cwd, env=env, timeout=TIMEOUT_S, error=AllureError)
    except AllureError as error:  # a failed allure keeps proc.run's wording; these two, ours
        cause = error.__cause__
        if isinstance(cause, FileNotFoundError):  # e.g. node itself is missing
            raise AllureError(f"cannot run {command[0]}: {cause}; run scripts/setup.sh") from cause
        if cause is not None:  # the only other cause: it outlived TIMEOUT_S
            raise AllureError(f"allure did not finish within {TIMEOUT_S} s") from cause
        raise
