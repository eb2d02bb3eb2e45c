"""Benchmark and load-test reports: tidy results tables, HTML/Markdown pages, history."""

# The page `python -m reports --out DIR` writes; the report stage publishes it as its own artifact.
REPORT_PAGE = "report.html"
