"""The package-list solver: a shopping list and a package repository in, a closed, fully
versioned package list out.

A shopping list names the packages an appliance wants (`name` or `name=version`, one a line).
The solver picks one version of each wanted name and of everything those need, transitively,
such that every Depends and Pre-Depends is satisfied inside the list, nothing in it Conflicts
with or Breaks anything else in it, no name has two versions and every Essential package is
in. It states that as the μCernVM paper's integer linear program (one binary per package
version, newest versions first, then the fewest packages) and solves it with HiGHS (or glpk,
the paper's engine). The result is closed: it installs from itself alone, and it pins every
version, so the same list and indexes give the same appliance.

Modules:
- model: Package, Relation and Repository, and Debian's rules for what satisfies what
  (dpkg_compare and the Provides, `:any` and self-conflict rules);
- index: what both index readers share: their errors, reading compressed index files;
- debian: Debian `Packages` files in and out, dpkg's version syntax, the parsed-index cache;
- rpm: RPM `primary.xml` and rpm's version order (used by the tests: the model is not
  Debian-only);
- solve: the shopping list reader, the ILP model and the engines;
- explain: why a list has no solution (a minimal core, and the chains that collide);
- closed_list: the solver's output (text, JSON, the pinning `cernvm-system` .deb, diffs) and
  two independent closure checks (our rules, and Debian's dose-distcheck);
- synthetic, synthetic_table: seeded repositories shaped like the paper's, for the solver
  suite and the benchmark.

This package is a foundation of its own: it imports only lab.artifacts and lab.messages, never
lab.build, lab.targets or lab.services. lab/build/rootfs.py (which builds the root file system
from the closed list), the CLI (`ucvm-lab solve`, `ucvm-lab diff`) and bench/solver.py are
clients like any other.
"""
