"""Reports built from the boot suite's allure-results.

- ``lab.report.table``: the support-status table (Markdown and HTML), from evidence only.
- ``lab.report.known_issues``: known-issues.yaml, the table's footnotes.
- ``lab.report.gate``: the release gate's verdict.
- ``lab.report.allure_html``: the Allure HTML report (npm ``allure`` v3).
"""
