"""`harness run --parallel` on 4 emulated phones whose runners wait rather than compute (the
test delay knob): the devices at once take at most 0.35x the time of one after another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.emulators.adb import AdbServer

REPO = Path(__file__).resolve().parents[2]

DELAY_MS = 2000  # per decode step: a runner waits ~32 s, against ~3 s of model load
STORY = {"id": "story", "prompt": "Write a long story about a dragon who learns to bake bread."}
GOAL = 0.35


def test_four_devices_at_once_take_at_most_a_third_of_the_time(tmp_path) -> None:
    server = AdbServer(["galaxy-s24", "galaxy-s24", "galaxy-s25", "galaxy-s25"], tmp_path / "devices").start()
    env = {**os.environ, "ANDROID_ADB_SERVER_PORT": str(server.port), "ADBUTILS_ADB_PATH": "/bin/false",
           "HARNESS_TEST_DELAY_MS_PER_TOKEN": str(DELAY_MS)}
    (tmp_path / "prompts.jsonl").write_text(json.dumps(STORY) + "\n")
    scenario = tmp_path / "farm.yaml"
    scenario.write_text(json.dumps({
        "name": "farm-bench", "variants": {"precision": ["fp32"]}, "baseline": {"precision": "fp32"},
        "targets": ["adb"],
        "workload": {"prompts": "prompts.jsonl", "max_new_tokens": 16, "repetitions": 1, "warmup": 0}}))
    seconds = {}
    try:
        for mode in ("sequential", "parallel"):
            start = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(scenario), "--db",
                                   str(tmp_path / f"{mode}.sqlite"), *(["--parallel"] if mode == "parallel" else [])],
                                  cwd=REPO, env=env, capture_output=True, text=True)
            seconds[mode] = time.monotonic() - start
            assert done.returncode == 0, done.stderr
    finally:
        server.close()
    ratio = seconds["parallel"] / seconds["sequential"]
    print(f"4 devices: sequential {seconds['sequential']:.1f} s, parallel {seconds['parallel']:.1f} s, "
          f"ratio {ratio:.2f} (goal <= {GOAL})")
    assert ratio <= GOAL
