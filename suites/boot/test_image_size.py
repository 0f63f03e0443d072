"""The boot loader image per format, against the paper's 12 MB."""

from __future__ import annotations

import allure
import pytest

from lab import matrix
from lab.build.bootloader import IMAGE_FORMATS, BootLoader

MB = 1_000_000


@pytest.mark.parametrize("image_format", IMAGE_FORMATS)
def test_image_fits_the_budget(
    image_format: str, boot_loader: BootLoader, lab_matrix: matrix.Matrix
) -> None:
    budget_mb = lab_matrix.checks["image_size"].budget_mb
    image = boot_loader.manifest["images"][image_format]
    on_disk = boot_loader.image(image_format).stat().st_size
    allure.attach(
        f"{image_format}: {on_disk} bytes on disk, {image['gzip_bytes']} gzip'd; "
        f"budget {budget_mb} MB compressed",
        "size",
        allure.attachment_type.TEXT,
    )
    assert on_disk == image["bytes"]
    assert image["gzip_bytes"] <= budget_mb * MB, (
        f"{image_format} is {image['gzip_bytes'] / MB:.1f} MB compressed; "
        f"the budget is {budget_mb} MB"
    )
