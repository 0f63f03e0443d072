"""What the guest talks to at run time: the services the lab runs on the host's 127.0.0.1.

A *service* answers a guest (or a driver under test) while a run lasts, and is gone when it
ends: the OS repository's nginx (``repo``), a cloud's metadata service (``metadata``), the
emulators of the clouds' APIs (``emulators``: moto, govmomi's vcsim). lab/build makes the
things they serve (the repository, the context); lab/targets starts them for its instances.

Every service has one life cycle (``base.Service``): ``start()`` returns once it answers,
``stop()`` leaves nothing behind (and may be called twice), ``with Thing(...) as thing:`` does
both, and ``Thing.sweep(run_root)`` removes what the services of dead runs left running.

To add a service: subclass ``base.ChildServer`` for a child process (write ``_launch``, which
starts it and returns once it serves), or ``base.Service`` for one that lives in the lab's own
process; give it a ``url``. If a run killed before its ``stop()`` can leave it running, give
it a ``sweep`` and list it in ``sweep.SERVICES`` (``ucvm-lab sweep`` calls them all).

This package's modules are imported one by one (``from lab.services.repo import RepoServer``):
this file imports nothing, so that a caller of one service loads no other.
"""
