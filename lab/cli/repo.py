"""``ucvm-lab repo``: the signed OS repository (init, publish, publish-loader, tag, branch,
list, serve)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rich.table import Table

from lab import matrix
from lab.build.osrepo import repository as osrepo
from lab.build.osrepo.keys import RepoError
from lab.build.osrepo.manifest import Loader, Manifest
from lab.cli.common import error_exit, os_problem, out
from lab.run import Run, new_run_id
from lab.services.repo import RepoServer


def os_repository(args: argparse.Namespace) -> osrepo.Repository:
    return osrepo.Repository(Path(args.repo) if args.repo else osrepo.default_repo_path())


def cmd_repo(args: argparse.Namespace, lab: matrix.Matrix | None) -> int:
    try:
        if args.repo_command == "serve":
            assert lab is not None, "serve sets needs_matrix: main() loaded the matrix"
            return cmd_repo_serve(args, os_repository(args), lab)
        return args.repo_func(args, os_repository(args))
    except RepoError as error:
        return error_exit(f"repo {args.repo_command}", str(error), 2)
    except OSError as error:  # a read-only or full file system, a path that is not a directory
        return error_exit(
            f"repo {args.repo_command}",
            f"{os_problem(error)}; the repository (--repo, UCVM_REPO) and the key's directory "
            "(UCVM_REPO_KEY) must be directories you can write",
            1,
        )


def cmd_repo_init(args: argparse.Namespace, repo: osrepo.Repository) -> int:
    manifest = repo.init(args.name, args.default_branch)
    key = repo.public_key()
    out.print(
        f"repository {manifest.repository} in {repo.root}, key {repo.key_path} ({key.keyid})",
        highlight=False,
    )
    return 0


def cmd_repo_publish(args: argparse.Namespace, repo: osrepo.Repository) -> int:
    repo.check_key()  # a repository that `repo init` made, and its own key
    before = repo.manifest().serial
    snapshot = repo.publish(
        Path(args.image), args.tag, args.branch, args.block_bytes, loader=args.loader
    )
    if repo.manifest().serial == before:
        out.print(f"{snapshot.tag} already names this image: nothing to do", highlight=False)
    else:
        loader = f", loader {snapshot.loader}" if snapshot.loader else ""
        out.print(
            f"published {snapshot.tag} on {snapshot.branch}: {snapshot.image_bytes:,} bytes, "
            f"{snapshot.block_count} blocks, sha256 {snapshot.image_sha256}{loader}",
            highlight=False,
        )
    return 0


def cmd_repo_publish_loader(args: argparse.Namespace, repo: osrepo.Repository) -> int:
    repo.check_key()
    before = repo.manifest().serial
    loader = repo.publish_loader(args.version, Path(args.kernel), Path(args.initrd))
    if repo.manifest().serial == before:
        out.print(
            f"loader {loader.version} already has this kernel and initrd: nothing to do",
            highlight=False,
        )
    else:
        out.print(
            f"published loader {loader.version}: kernel {loader.kernel_bytes:,} bytes, sha256 "
            f"{loader.kernel_sha256}; initrd {loader.initrd_bytes:,} bytes, sha256 "
            f"{loader.initrd_sha256}",
            highlight=False,
        )
    return 0


def cmd_repo_tag(args: argparse.Namespace, repo: osrepo.Repository) -> int:
    snapshot = repo.tag(args.existing, args.new)
    out.print(f"{snapshot.tag} names {snapshot.image_sha256}", highlight=False)
    return 0


def cmd_repo_branch(args: argparse.Namespace, repo: osrepo.Repository) -> int:
    snapshot = repo.branch(args.name, args.tag)
    out.print(f"branch {args.name} -> {snapshot.tag} ({snapshot.image_sha256})", highlight=False)
    return 0


def cmd_repo_list(args: argparse.Namespace, repo: osrepo.Repository) -> int:
    """The snapshots; with --verify, each re-hashed (exit 1 if one does not match)."""
    manifest = repo.manifest()
    problems = repo.verify() if args.verify else None
    if args.json:
        print(json.dumps(repo_json(manifest, problems), indent=2))
    else:
        out.print(repo_table(repo, manifest, problems))
        if manifest.loaders:
            out.print(loader_table(manifest.loaders, problems))
    for tag, found in (problems or {}).items():
        for problem in found:
            print(f"ucvm-lab repo list: {tag}: {problem}", file=sys.stderr)
    return 1 if problems and any(problems.values()) else 0


def repo_json(manifest: Manifest, problems: dict[str, list[str]] | None) -> dict:
    heads = manifest.heads()
    snapshots = []
    for snapshot in manifest.snapshots:
        row = {**dataclasses.asdict(snapshot), "heads": heads.get(snapshot.tag, [])}
        if problems is not None:
            row["problems"] = problems[snapshot.tag]
        snapshots.append(row)
    loaders = []
    for loader in manifest.loaders:
        entry = {**dataclasses.asdict(loader), "kernel": loader.kernel_name}
        entry["initrd"] = loader.initrd_name
        if problems is not None:
            entry["problems"] = problems[osrepo.loader_key(loader.version)]
        loaders.append(entry)
    return {
        "repository": manifest.repository, "serial": manifest.serial,
        "published": manifest.published, "default_branch": manifest.default_branch,
        "branches": manifest.branches, "snapshots": snapshots, "loaders": loaders,
    }  # fmt: skip


def repo_table(
    repo: osrepo.Repository, manifest: Manifest, problems: dict[str, list[str]] | None
) -> Table:
    listing = Table(
        title=f"{manifest.repository} in {repo.root}: serial {manifest.serial}, "
        f"published {manifest.published}, default branch {manifest.default_branch}"
    )
    columns = ["tag", "branch", "published", "size", "image sha256", "loader", "head of"]
    for column in columns + (["verified"] if problems is not None else []):
        listing.add_column(column)
    heads = manifest.heads()
    for snapshot in manifest.snapshots:
        row = [
            snapshot.tag, snapshot.branch, snapshot.timestamp, f"{snapshot.image_bytes:,}",
            snapshot.image_sha256[:16], snapshot.loader or "-",
            ", ".join(heads.get(snapshot.tag, [])),
        ]  # fmt: skip
        if problems is not None:
            row.append("[red]FAILED[/]" if problems[snapshot.tag] else "ok")
        listing.add_row(*row)
    return listing


def loader_table(loaders: list[Loader], problems: dict[str, list[str]] | None) -> Table:
    listing = Table(title="boot loader versions")
    columns = ["loader", "published", "kernel", "kernel sha256", "initrd", "initrd sha256"]
    for column in columns + (["verified"] if problems is not None else []):
        listing.add_column(column)
    for loader in loaders:
        row = [
            loader.version, loader.timestamp, f"{loader.kernel_bytes:,}",
            loader.kernel_sha256[:16], f"{loader.initrd_bytes:,}", loader.initrd_sha256[:16],
        ]  # fmt: skip
        if problems is not None:
            row.append("[red]FAILED[/]" if problems[osrepo.loader_key(loader.version)] else "ok")
        listing.add_row(*row)
    return listing


def cmd_repo_serve(args: argparse.Namespace, repo: osrepo.Repository, lab: matrix.Matrix) -> int:
    """Serve until Ctrl-C, as a run of its own (so `ucvm-lab sweep` finds a leftover nginx)."""
    manifest = repo.manifest()  # refuses to serve what does not verify
    run = Run(new_run_id(), lab.settings.run_root).hold()
    try:
        with RepoServer(repo.root, run.dir / "osrepo-server", port=args.port) as server:
            out.print(
                f"serving {manifest.repository} (serial {manifest.serial}) at {server.url}\n"
                f"access log {server.access_log}; Ctrl-C stops",
                highlight=False,
            )
            status = server.wait()
        print(f"ucvm-lab repo serve: nginx exited ({status}): {server.error_log}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        run.release()


def add_repo_commands(commands: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--repo", help="the repository (default: UCVM_REPO, else <artifact store>/osrepo)"
    )
    repo = commands.add_parser("repo", help="the signed OS repository (its key: UCVM_REPO_KEY)")
    repo.set_defaults(func=cmd_repo, needs_matrix=False)
    group = repo.add_subparsers(dest="repo_command", required=True)
    init = group.add_parser("init", parents=[common], help="make an empty repository")
    init.add_argument("--name", default="ucvm")
    init.add_argument("--default-branch", default="prod")
    init.set_defaults(repo_func=cmd_repo_init)
    publish = group.add_parser("publish", parents=[common], help="add a squashfs snapshot")
    publish.add_argument("image")
    publish.add_argument("--tag", required=True)
    publish.add_argument("--branch", required=True)
    publish.add_argument("--block-bytes", type=int, default=osrepo.BLOCK_BYTES)
    publish.add_argument("--loader", help="the boot loader version the snapshot wants")
    publish.set_defaults(repo_func=cmd_repo_publish)
    loader = group.add_parser(
        "publish-loader", parents=[common], help="add a boot loader version (kernel, initrd)"
    )
    loader.add_argument("version")
    loader.add_argument("--kernel", required=True, help="the loader's kernel (vmlinuz)")
    loader.add_argument("--initrd", required=True, help="the loader's initramfs")
    loader.set_defaults(repo_func=cmd_repo_publish_loader)
    tag = group.add_parser("tag", parents=[common], help="give a snapshot one more tag")
    tag.add_argument("existing")
    tag.add_argument("new")
    tag.set_defaults(repo_func=cmd_repo_tag)
    branch = group.add_parser("branch", parents=[common], help="create or move a branch head")
    branch.add_argument("name")
    branch.add_argument("tag")
    branch.set_defaults(repo_func=cmd_repo_branch)
    listing = group.add_parser("list", parents=[common], help="snapshots, tags, branch heads")
    listing.add_argument("--verify", action="store_true", help="re-hash every snapshot")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(repo_func=cmd_repo_list)
    serve = group.add_parser("serve", parents=[common], help="serve over HTTP until Ctrl-C")
    serve.add_argument("--port", type=int, help="default: a free port")
    serve.set_defaults(needs_matrix=True)  # its run root, for the sweeper
