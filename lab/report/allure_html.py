"""The Allure HTML report, made by the npm package ``allure`` (v3) as one self-contained file.

Command: ``allure allure2 <results-dir>... --output <out_dir> --single-file --report-name <name>``
with ``ALLURE_NO_ANALYTICS=true``. ``allure generate`` has no single-file option (a multi-file
report does not render from file://), and ``allure awesome --single-file`` embeds a Google
Analytics tag that no option removes; the ``allure2`` (classic-looking) plugin honours
``ALLURE_NO_ANALYTICS``.

What the report adds to the results is one more results directory, made for the generator in
a temporary directory (Allure 3's allure2 reader takes these files from any results dir):
- ``environment.properties``: the Environment panel (host, tools, boot loader, matrix);
- ``executor.json``: the Executor panel (the CI job or "local", the run id, a link), and the
  trend chart's label of this report;
- ``ucvm-report-globals.json``: the plots (PNG) as the run's global attachments, shown in the
  report's Run tab (no pretend test result that the statistics would count).

Allure's history (``--history-path``, a JSONL file of one report a line) feeds its trend chart;
``historyLimit`` (in an ``allurerc.json`` given with ``--config``) keeps the newest
HISTORY_LIMIT. A report of the same results as the history's newest adds no line: a rebuilt
report (``ucvm-lab report``) is not another nightly. Beside the file, ``.last-results`` holds
the digest of the results last added.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lab import proc

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ALLURE_BIN = REPO_ROOT / "node_modules" / ".bin" / "allure"
TIMEOUT_S = 300
HISTORY_LIMIT = 30
"""The reports Allure's history keeps for its trend chart: a month of nightlies."""
GLOBALS_FILE = "ucvm-report-globals.json"


class AllureError(RuntimeError):
    """The allure CLI is missing or failed."""


@dataclass(frozen=True)
class Executor:
    """Who ran the results: the Executor panel, and this report's label in the trend chart."""

    name: str  # "GitHub Actions", "GitLab CI", "Jenkins", "CI" or "local"
    type: str  # github, gitlab, jenkins, ci, local: Allure's icon
    build_name: str  # the job and the lab's run id, e.g. "nightly #41 (run 1202183012ab12)"
    build_url: str = ""  # the job's page (http or https only)
    url: str = ""  # the CI server's

    def as_json(self, *, build_order: int, report_name: str) -> dict[str, object]:
        fields = {
            "name": self.name,
            "type": self.type,
            "buildName": self.build_name,
            "buildUrl": web_url(self.build_url),
            "url": web_url(self.url),
            "buildOrder": build_order,
            "reportName": report_name,
        }
        return {key: value for key, value in fields.items() if value != ""}


def executor_from_env(env: Mapping[str, str], run_id: str) -> Executor:
    """The CI job that runs this (GitHub Actions, GitLab CI, Jenkins, any CI that sets
    ``CI``) from its environment variables, else "local"; the lab's run id either way."""
    run = f"run {run_id}"
    if env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        repository, github_run = env.get("GITHUB_REPOSITORY"), env["GITHUB_RUN_ID"]
        job = " ".join(filter(None, (env.get("GITHUB_WORKFLOW"), env.get("GITHUB_JOB"))))
        link = f"{server}/{repository}/actions/runs/{github_run}" if repository else ""
        number = env.get("GITHUB_RUN_NUMBER") or github_run
        return Executor(
            "GitHub Actions", "github", f"{job or 'run'} #{number} ({run})", link, server
        )
    if env.get("GITLAB_CI") or env.get("CI_JOB_URL"):
        job = f"{env.get('CI_JOB_NAME') or 'job'} #{env.get('CI_JOB_ID') or '?'}"
        return Executor(
            "GitLab CI", "gitlab", f"{job} ({run})", env.get("CI_JOB_URL", ""),
            env.get("CI_SERVER_URL", ""),
        )  # fmt: skip
    if env.get("JENKINS_URL") or env.get("BUILD_URL"):
        job = f"{env.get('JOB_NAME') or 'job'} #{env.get('BUILD_NUMBER') or '?'}"
        return Executor(
            "Jenkins", "jenkins", f"{job} ({run})", env.get("BUILD_URL", ""),
            env.get("JENKINS_URL", ""),
        )  # fmt: skip
    if env.get("CI", "").lower() not in ("", "0", "false", "no"):
        return Executor("CI", "ci", run, env.get("CI_JOB_URL", ""))
    return Executor("local", "local", run)


def web_url(link: str) -> str:
    """Only http(s) links are given to the report as links."""
    return link if urlsplit(link).scheme in ("http", "https") else ""


def generate_html(
    results_dirs: Sequence[Path],
    out_dir: Path,
    *,
    allure_bin: Path | None = None,
    report_name: str = "ucvm-lab",
    environment: Mapping[str, str] | None = None,
    executor: Executor | None = None,
    attachments: Sequence[tuple[str, Path]] = (),
    history: Path | None = None,
    history_limit: int = HISTORY_LIMIT,
) -> Path:
    """Generate a single-file report of all ``results_dirs`` (merged) in ``out_dir``.

    ``environment``: the Environment panel's rows; ``executor``: the Executor panel;
    ``attachments``: (title, PNG file) of the run (the plots); ``history``: the JSONL file
    of Allure's history, read for the trend chart and added to (see the module's docstring).
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
    with tempfile.TemporaryDirectory(prefix="ucvm-allure-") as temporary:
        work = Path(temporary)
        use = None if history is None else use_history(history, history_limit, results_dirs, work)
        dirs = list(results_dirs)
        if environment or executor or attachments:
            order = use.reports if use else 1
            report = work / "report"
            dirs.append(
                extra_results(report, environment, executor, attachments, order, report_name)
            )
        options = use.options if use else []
        _run([*allure_command(binary, dirs, out_dir, report_name), *options], cwd=out_dir)
    index = out_dir / "index.html"
    if not index.is_file():
        raise AllureError(f"allure finished but wrote no {index}")
    if history is not None and use is not None and use.added is not None:
        last_results(history).write_text(use.added + "\n", encoding="utf-8")
    return index


def extra_results(
    directory: Path,
    environment: Mapping[str, str] | None,
    executor: Executor | None,
    attachments: Sequence[tuple[str, Path]],
    build_order: int,
    report_name: str,
) -> Path:
    """The results directory of the report's own files (see the module's docstring)."""
    directory.mkdir(parents=True)
    if environment:
        lines = [
            f"{escape_property(k, key=True)}={escape_property(v)}" for k, v in environment.items()
        ]
        (directory / "environment.properties").write_text("\n".join(lines) + "\n", "utf-8")
    if executor:
        executor_json = executor.as_json(build_order=build_order, report_name=report_name)
        (directory / "executor.json").write_text(json.dumps(executor_json), "utf-8")
    if attachments:
        now_ms = int(time.time() * 1000)
        listed = []
        for i, (title, path) in enumerate(attachments):
            source = f"ucvm-report-{i}-attachment{path.suffix}"
            shutil.copyfile(path, directory / source)
            kind = "image/svg+xml" if path.suffix == ".svg" else "image/png"
            listed.append({"name": title, "source": source, "type": kind, "timestamp": now_ms})
        globals_json = {"attachments": listed, "errors": []}
        (directory / GLOBALS_FILE).write_text(json.dumps(globals_json), "utf-8")
    return directory


def escape_property(text: str, *, key: bool = False) -> str:
    """``text`` for a Java .properties file (what the reader parses): backslashes, line
    breaks; in a key also spaces and separators; a value's leading space."""
    out = []
    for i, char in enumerate(text):
        if char == "\\":
            out.append("\\\\")
        elif char in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[char])
        elif (key and char in " =:#!") or (not key and i == 0 and char == " "):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


# --- Allure's history ----------------------------------------------------------------------------


def history_problem(history: Path) -> str | None:
    """Why Allure could not read ``history`` (it stops on a line that is not JSON), or None
    when it can (an absent file is a history not begun)."""
    try:
        text = history.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        return f"{history}: unreadable: {error}"
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as error:
            return f"{history}:{number}: not a JSON line of Allure's history: {error.msg}"
        if not isinstance(entry, dict):
            return f"{history}:{number}: not a JSON object"
    return None


@dataclass(frozen=True)
class HistoryUse:
    """How one report uses Allure's history."""

    options: list[str]  # allure's: --history-path, --config
    reports: int  # the reports in the trend chart, this one included
    added: str | None  # the digest of the results this report adds, None: it adds none


def use_history(history: Path, limit: int, results_dirs: Sequence[Path], work: Path) -> HistoryUse:
    """Read ``history`` and add this report, unless its results are the history's newest:
    then read the history without that line, and add nothing."""
    history.parent.mkdir(parents=True, exist_ok=True)
    digest = results_digest(results_dirs)
    marker = last_results(history)
    lines = history_lines(history)
    same = bool(lines) and marker.is_file() and marker.read_text("utf-8").strip() == digest
    read = history
    if same:
        read = work / "history-before.jsonl"
        read.write_text("".join(f"{line}\n" for line in lines[:-1]), encoding="utf-8")
    config = work / "allurerc.json"
    config.write_text(json.dumps({"historyLimit": limit, "appendHistory": not same}), "utf-8")
    return HistoryUse(
        ["--history-path", str(read), "--config", str(config)],
        min(len(lines) - same, limit) + 1,
        None if same else digest,
    )


def history_lines(history: Path) -> list[str]:
    try:
        return [line for line in history.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def last_results(history: Path) -> Path:
    return history.with_name(history.name + ".last-results")


def results_digest(results_dirs: Sequence[Path]) -> str:
    """One digest of the result files of ``results_dirs``: their names and contents."""
    digest = hashlib.sha256()
    files = sorted((p.name, p) for d in results_dirs for p in d.glob("*-result.json"))
    for name, path in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


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
