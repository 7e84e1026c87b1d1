"""Reports rendered from a results document (see `harness.analysis.results`)."""

from harness.output.report.html import render_html, write_html

__all__ = ["render_html", "write_html"]
