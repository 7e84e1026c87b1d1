"""Shared fixtures: scenario files written on the fly, and one real smoke run per session."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]


def harness(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the harness CLI in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True)


PROMPTS = [
    {"id": "capital", "prompt": "What is the capital of France? Answer with one word.",
     "reference": ["Paris", "The capital of France is Paris"]},
]


def write_scenario(folder: Path, prompts: list[dict] | None = None, **fields) -> Path:
    """A small valid scenario in `folder`, with `fields` replacing or adding top-level keys."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(p) for p in prompts or PROMPTS) + "\n")
    scenario = {
        "name": "tiny",
        "variants": {"precision": ["fp32", "fp16"]},
        "baseline": {"precision": "fp32"},
        "workload": {"prompts": "prompts.jsonl", "max_new_tokens": 4, "repetitions": 1, "warmup": 0},
    }
    scenario.update(fields)
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


@dataclass(frozen=True)
class SmokeRun:
    process: subprocess.CompletedProcess
    db: Path
    json: Path
    html: Path

    @property
    def document(self) -> dict:
        return json.loads(self.json.read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """`harness run scenarios/smoke.yaml` for real on the local target, once per session."""
    out = tmp_path_factory.mktemp("smoke")
    run = SmokeRun(None, out / "results.sqlite", out / "smoke.json", out / "smoke.html")  # type: ignore[arg-type]
    process = harness("run", "scenarios/smoke.yaml", "--db", str(run.db), "--json", str(run.json),
                      "--report", str(run.html))
    return SmokeRun(process, run.db, run.json, run.html)
