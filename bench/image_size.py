"""Image size: the boot loader in every format against the paper's 12 MB and 400 MB.

Everything printed is measured in this run: file sizes are stat()ed, gzip sizes are
compressed here (gzip -6), modules are counted inside the packed initramfs and in the unpacked
Debian kernel tree. The anchors are the paper's figures (constants, labelled "paper"). The
build manifest's figures are only cross-checked against the measured ones.

    .venv/bin/python bench/image_size.py [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import lzma
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lab.artifacts import ArtifactStore
from lab.build import kernel as kernel_pkg
from lab.build.bootloader import IMAGE_FORMATS, BootLoader, build

# --- the anchors: the paper's figures (CHEP 2013, Blomer et al.), not measurements -------------
MB = 10**6  # the paper's "MB", taken as 10^6 bytes (the stricter reading of a budget)
PAPER_LOADER_BYTES = 12 * MB  # "a 12 MB boot loader image (kernel + initramfs)"
PAPER_OS_IMAGE_BYTES = 400 * MB  # "instead of a 400 MB OS image"
PAPER_LOADER_MODULES = 100  # "about 100 modules ..."
PAPER_LOADER_MODULE_BYTES = 8 * MB  # "... / 8 MB"
PAPER_FULL_MODULES = 2000  # "... instead of 2,000 ..."
PAPER_FULL_MODULE_BYTES = 120 * MB  # "... / 120 MB"


@dataclass
class ImageFigures:
    format: str
    file: str
    bytes: int
    gzip_bytes: int
    manifest_agrees: bool


@dataclass
class ModuleFigures:
    what: str
    count: int
    bytes: int


@dataclass
class PartFigures:
    part: str
    bytes: int


# --- measuring ---------------------------------------------------------------------------------


def gzip_bytes(path: Path) -> int:
    """Bytes after gzip -6, streamed so a large image does not sit in memory twice."""
    counter = _CountingSink()
    with (
        path.open("rb") as source,
        gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=6, mtime=0) as sink,
    ):
        for block in iter(lambda: source.read(1 << 20), b""):
            sink.write(block)
    return counter.count


class _CountingSink:
    """A write-only file object that only counts what it is given."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered: the sink only counts what it is given."""


def measure_image(loader: BootLoader, fmt: str, manifest: dict) -> ImageFigures:
    path = loader.image(fmt)
    size, packed = path.stat().st_size, gzip_bytes(path)
    recorded = manifest["images"].get(fmt, {})
    agrees = recorded.get("bytes") == size and recorded.get("gzip_bytes") == packed
    return ImageFigures(fmt, path.name, size, packed, agrees)


def newc_members(archive: bytes) -> list[tuple[str, int]]:
    """(name, size) of each member of a newc cpio archive."""
    members, offset = [], 0
    while offset + 110 <= len(archive):
        header = archive[offset : offset + 110]
        if header[:6] not in (b"070701", b"070702"):
            raise ValueError(f"not a newc cpio header at byte {offset}")
        size, name_len = int(header[54:62], 16), int(header[94:102], 16)
        name = archive[offset + 110 : offset + 110 + name_len - 1].decode()
        if name == "TRAILER!!!":
            break
        data_at = _align4(offset + 110 + name_len)
        members.append((name, size))
        offset = _align4(data_at + size)
    return members


def _align4(value: int) -> int:
    return (value + 3) & ~3


def is_module(name: str) -> bool:
    return name.endswith((".ko", ".ko.xz", ".ko.zst", ".ko.gz"))


def initramfs_modules(initrd: Path) -> ModuleFigures:
    members = newc_members(lzma.decompress(initrd.read_bytes()))
    modules = [size for name, size in members if is_module(name)]
    return ModuleFigures("this boot loader's initramfs", len(modules), sum(modules))


def kernel_tree_modules(kernel: kernel_pkg.Kernel) -> ModuleFigures:
    modules = [p.stat().st_size for p in kernel.modules.rglob("*.ko*") if is_module(p.name)]
    return ModuleFigures(f"{kernel.package} package", len(modules), sum(modules))


def measure(store: ArtifactStore) -> dict:
    loader = build(store)
    manifest = loader.manifest
    kernel = kernel_pkg.fetch(store)
    return {
        "images": [measure_image(loader, fmt, manifest) for fmt in IMAGE_FORMATS],
        "parts": [
            PartFigures("kernel (vmlinuz)", loader.vmlinuz.stat().st_size),
            PartFigures("initramfs (initrd.img, xz)", loader.initrd.stat().st_size),
        ],
        "loader_modules": initramfs_modules(loader.initrd),
        "full_modules": kernel_tree_modules(kernel),
        "manifest_module_count": manifest["modules"]["count"],
        "kernel": manifest["kernel"],
        "loader_root": str(loader.root),
    }


# --- printing ----------------------------------------------------------------------------------


def mb(value: int) -> str:
    return f"{value / MB:.2f}"


def ratio(value: float, anchor: float) -> str:
    return f"{value / anchor:.3f}"


def images_table(images: list[ImageFigures]) -> Table:
    table = Table(title="Boot loader image, per format (MB = 10^6 bytes)")
    for column in (
        "format",
        "MB",
        "gzip MB",
        "÷ 12 MB",
        "gzip ÷ 12 MB",
        "gzip ÷ 400 MB",
        "gzip ≤ 12 MB",
        "manifest",
    ):
        table.add_column(column, justify="left" if column == "format" else "right")
    for image in images:
        table.add_row(
            image.format,
            mb(image.bytes),
            mb(image.gzip_bytes),
            ratio(image.bytes, PAPER_LOADER_BYTES),
            ratio(image.gzip_bytes, PAPER_LOADER_BYTES),
            ratio(image.gzip_bytes, PAPER_OS_IMAGE_BYTES),
            "yes" if image.gzip_bytes <= PAPER_LOADER_BYTES else "NO",
            "agrees" if image.manifest_agrees else "DIFFERS",
        )
    table.caption = (
        "anchors (paper, constants): 12 MB boot loader, 400 MB conventional OS image; "
        "manifest: whether the sizes the build recorded match these"
    )
    return table


def parts_table(parts: list[PartFigures]) -> Table:
    total = sum(p.bytes for p in parts)
    table = Table(title="Kernel + initramfs split")
    for column in ("part", "MB", "share", "÷ 12 MB (paper)"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in [*parts, PartFigures("kernel + initramfs", total)]:
        table.add_row(
            part.part,
            mb(part.bytes),
            f"{part.bytes / total:.1%}",
            ratio(part.bytes, PAPER_LOADER_BYTES),
        )
    return table


def module_row(what: str, source: str, count: int, size: int, full: tuple[int, int]) -> list[str]:
    return [
        what,
        source,
        f"{count:,}",
        mb(size),
        ratio(count, PAPER_LOADER_MODULES),
        ratio(size, PAPER_LOADER_MODULE_BYTES),
        f"{count / full[0]:.1%}",
        f"{size / full[1]:.1%}",
    ]


def modules_table(loader: ModuleFigures, full: ModuleFigures) -> Table:
    table = Table(title="Kernel modules: carried in the boot loader vs the whole kernel")
    for column in ("what", "source", "modules", "MB", "÷ 100", "÷ 8 MB", "% count", "% bytes"):
        table.add_column(column, justify="left" if column in ("what", "source") else "right")
    measured = (full.count, full.bytes)
    paper = (PAPER_FULL_MODULES, PAPER_FULL_MODULE_BYTES)
    table.add_row(*module_row("boot loader", "measured", loader.count, loader.bytes, measured))
    table.add_row(*module_row("whole kernel", "measured", full.count, full.bytes, measured))
    table.add_row(
        *module_row("μCernVM", "paper", PAPER_LOADER_MODULES, PAPER_LOADER_MODULE_BYTES, paper)
    )
    table.add_row(
        *module_row("whole kernel", "paper", PAPER_FULL_MODULES, PAPER_FULL_MODULE_BYTES, paper)
    )
    table.caption = (
        "measured: .ko files in the packed initramfs and in the unpacked "
        f"{full.what}; ÷ 100, ÷ 8 MB: ratio to the paper's boot loader; "
        "% count, % bytes: share of the whole kernel on the same row's side"
    )
    return table


def report(figures: dict, console: Console) -> None:
    kernel = figures["kernel"]
    console.print(
        f"boot loader {figures['loader_root']}, kernel {kernel['package']} {kernel['version']}"
    )
    console.print(images_table(figures["images"]))
    console.print(parts_table(figures["parts"]))
    console.print(modules_table(figures["loader_modules"], figures["full_modules"]))
    if figures["loader_modules"].count != figures["manifest_module_count"]:
        console.print(
            f"[red]the manifest records {figures['manifest_module_count']} modules; "
            f"the initramfs holds {figures['loader_modules'].count}[/red]"
        )


def to_json(figures: dict) -> dict:
    return {
        "benchmark": "image_size",
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "anchors_paper": {
            "boot_loader_bytes": PAPER_LOADER_BYTES,
            "os_image_bytes": PAPER_OS_IMAGE_BYTES,
            "loader_modules": PAPER_LOADER_MODULES,
            "loader_module_bytes": PAPER_LOADER_MODULE_BYTES,
            "full_kernel_modules": PAPER_FULL_MODULES,
            "full_kernel_module_bytes": PAPER_FULL_MODULE_BYTES,
        },
        "kernel": figures["kernel"],
        "images": [
            asdict(i)
            | {
                "gzip_ratio_to_12MB": i.gzip_bytes / PAPER_LOADER_BYTES,
                "gzip_ratio_to_400MB": i.gzip_bytes / PAPER_OS_IMAGE_BYTES,
            }
            for i in figures["images"]
        ],
        "parts": [asdict(p) for p in figures["parts"]],
        "modules": {
            "loader": asdict(figures["loader_modules"]),
            "full_kernel": asdict(figures["full_modules"]),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the boot loader image in every format and print its ratios to the "
        "paper's figures (12 MB boot loader, 400 MB OS image, ~100 modules / 8 MB)."
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    with console.status("building (or finding) the boot loader and measuring it"):
        figures = measure(ArtifactStore())
    report(figures, console)
    if args.json:
        args.json.write_text(json.dumps(to_json(figures), indent=2) + "\n")
        console.print(f"figures saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
