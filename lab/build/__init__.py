"""Everything that makes the appliance, and nothing that runs it.

The boot loader (kernel.py, bootloader.py, initramfs/, blockd/: the kernel, the initramfs and
the images in every format), the OS releases (releases.py, rootfs.py, os_files.py, os-files/,
with the package list from lab.packages), the signed OS repository (osrepo/) and the
contextualization media (context.py, userdata.py). Each artifact is built once per input hash
(lab.artifacts). What serves these at run time is lab.services; what boots them, lab.targets:
nothing here starts a server or a guest (tests/test_layout.py checks).
"""
