"""The runtimes that serve a variant: our reference engine and native ones (llama.cpp's tools,
Qualcomm Genie, ExecuTorch's llama_main).

Each runtime module declares what it can serve, `problem(variant)`: None, or why not, in
one line; `problem` here adds the rules no runtime could serve (`Variant.problem`). Both
are checked when the scenario loads. The native modules also read their tool's
output into counters (`report.ToolReport`).
"""

from __future__ import annotations

from harness.runtimes import executorch, genie, llamacpp, reference
from harness.spec.variant import Variant

_SERVES = {"reference": reference.problem, "llamacpp": llamacpp.problem, "genie": genie.problem,
           "executorch": executorch.problem}


def problem(variant: Variant) -> str | None:
    """Why the variant cannot run, or None: no runtime could, or its runtime cannot."""
    if why := variant.problem():
        return why
    why = _SERVES[variant.runtime](variant)
    return f"runtime {variant.runtime!r}: {why}" if why else None


def prompt_problem(variant: Variant, template: str) -> str | None:
    """Why the variant's runtime cannot take a prompt of this template ("chat" or "raw"), or None."""
    why = llamacpp.prompt_problem(variant, template) if variant.runtime == "llamacpp" else None
    return f"runtime {variant.runtime!r}: {why}" if why else None
