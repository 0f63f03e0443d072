"""Reports built from the boot suite's allure-results: evidence in, tables and verdicts out.

- ``lab.report.table``: the support-status table's model (what each cell says), from evidence only.
- ``lab.report.render``: the table as Markdown and as one self-contained HTML page.
- ``lab.report.gate``: the release gate's verdict.
- ``lab.report.allure_html``: the Allure HTML report (npm ``allure`` v3).
- ``lab.report.publish``: the wiring the command line calls (results dirs -> files, verdict).

The results are read through ``lab.evidence`` (the label vocabulary the suites write with), the
footnotes come from ``lab.known_issues``. The report imports neither ``lab.matrix`` nor
``lab.targets``: the command line hands it plain data, so a report can be rebuilt from results.
"""
