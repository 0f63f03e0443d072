"""ucvm-lab: a test harness and compatibility lab for μCernVM-style virtual appliances.

One arrow runs through the code: matrix -> build -> services/targets -> observe -> suites ->
report, over a floor of foundations (config, evidence, run, proc, artifacts, messages) that
every layer may use. tests/test_layout.py holds it; README.md "Layout" names every module.
"""
