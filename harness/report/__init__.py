"""Reports rendered from a results document (see `harness.results`)."""

from harness.report.html import render_html, write_html

__all__ = ["render_html", "write_html"]
