"""The HTML report escapes everything that came from a scenario, a prompt or a model."""

from __future__ import annotations

import copy

from harness.report import render_html

EVIL = "<script>alert('x')</script>"


def test_text_from_outputs_and_errors_is_escaped(smoke_run) -> None:
    doc = copy.deepcopy(smoke_run.document)
    doc["results"][0]["outputs"][0]["text"] = EVIL
    doc["results"][1]["status"] = "failed"
    doc["results"][1]["error"] = EVIL
    doc["environment"]["hostname"] = EVIL
    html = render_html(doc)
    assert "<script" not in html
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    outputs_table = html[html.index("<h2>Outputs</h2>"):]
    environment_table = html[html.index("<h2>Environment</h2>"):]
    assert escaped in outputs_table and escaped in environment_table
    assert f"failed: {escaped}" in html
