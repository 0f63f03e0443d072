"""The OS repository (docs/os-on-demand.md), in parts that are imported one by one.

- ``keys``: the Ed25519 key that signs the manifest and its public half (the boot loader
  image carries it: lab.build.bootloader imports this part only);
- ``manifest``: the signed manifest's format (parse, render, sign, verify, resolve);
- ``repository``: the repository directory and its atomic, locked writes (publish, tag,
  branch, verify);
- ``files``: the crash-safe writes the key and the repository share.

This file imports nothing, so that importing one part loads no other. The nginx that serves a
repository to guests is a run-time service: lab.services.repo.
"""
