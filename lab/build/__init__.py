"""Everything that makes the appliance: kernel, initramfs, boot images (and later OS and solver)."""
