"""A loopback Qualcomm AI Hub: the service's REST + protobuf wire, run on this host.

The real, unmodified `qai-hub` client talks to it through its normal configuration (a
client.ini whose api_url points here). Requests and responses are the client's own
protobuf messages (`qai_hub.public_api_pb2`); upload and download URLs point back here,
so no S3 credentials are ever handed out. It stores uploads, "compiles" by validating
the ONNX model (target runtime `onnx` only: it has no QNN toolchain), and runs inference
and profile jobs with onnxruntime on the host in a child process per job
(harness/emulators/aihub/device.py), returning real outputs and measured timings in AI Hub's
formats. Its devices carry the attribute `emulated:onnxruntime-host`.

Jobs run one at a time in submission order (a queue), so concurrent jobs do not share
the host's cores and distort each other's timings. `Faults` injects the failures a
harness must survive: failed compile or profile jobs, jobs that never finish, 429s.
"""

from __future__ import annotations

import itertools
import json
import platform
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from qai_hub import public_api_pb2 as pb

EMULATED = "emulated:onnxruntime-host"
DEVICES = (  # name, os, chipset
    ("Samsung Galaxy S24 (Family)", "14", "qualcomm-snapdragon-8gen3"),
    ("Samsung Galaxy S25 (Family)", "15", "qualcomm-snapdragon-8-elite"),
)
DATASET_LIFETIME_S = 30 * 24 * 3600
State = pb.JobState


@dataclass
class Faults:
    """Failures to inject (tests), each for the next n matching requests."""

    failing_compiles: int = 0  # compile jobs that fail
    failing_profiles: int = 0  # profile jobs that fail on the device
    hanging_jobs: int = 0  # jobs that never finish
    throttled_submissions: int = 0  # job submissions answered with 429
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, name: str) -> bool:
        """True if the next request of this kind is to fail (and count it)."""
        with self._lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
            return left > 0


@dataclass
class _Job:
    job_id: str
    kind: str  # compile | inference
    request: pb.Job
    state: int = State.JOB_STATE_CREATED
    failure: str = ""
    target_model: pb.Model | None = None
    output_dataset: str = ""
    profile: pb.ProfileDetail | None = None


@dataclass
class _Store:
    folder: Path
    models: dict[str, pb.Model] = field(default_factory=dict)
    datasets: dict[str, pb.Dataset] = field(default_factory=dict)
    jobs: dict[str, _Job] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.ids):07d}"

    def file(self, kind: str, object_id: str) -> Path:
        return self.folder / kind / object_id


class Emulator:
    """The service; `start()` serves it on a thread, `url` is its api_url."""

    def __init__(self, token: str, port: int = 0, faults: Faults | None = None) -> None:
        self.token = token
        self.faults = faults or Faults()
        self._tmp = tempfile.TemporaryDirectory(prefix="aihub-emulator-")
        self.store = _Store(Path(self._tmp.name))
        for kind in ("models", "datasets", "work"):
            (self.store.folder / kind).mkdir()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._queue: queue.Queue[_Job] = queue.Queue()
        self.submitted: list[str] = []  # job ids in submission order (tests count compile jobs)
        self.throttled = 0  # submissions answered with 429
        self._lock = threading.Lock()

    def start(self) -> Emulator:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._worker, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._tmp.cleanup()

    def client_ini(self, path: Path, token: str | None = None) -> Path:
        """A qai-hub client.ini that points the client here."""
        path.write_text(f"[api]\napi_token = {token or self.token}\napi_url = {self.url}\n"
                        f"web_url = {self.url}/web/\nverbose = False\n")
        return path

    # -- jobs --------------------------------------------------------------------------
    def submit(self, request: pb.Job) -> _Job:
        kind = request.WhichOneof("job")
        job = _Job(self.store.new_id("j"), "compile" if kind == "compile_job" else "inference", request)
        if job.kind == "compile":
            # the client reads target_model from the job's first GET
            job.target_model = pb.Model(model_id=self.store.new_id("m"), name=f"{Path(request.compile_job.name).stem}.onnx",
                                        model_type=pb.ModelType.MODEL_TYPE_ONNX, producer_id=job.job_id)
        with self._lock:
            self.store.jobs[job.job_id] = job
            self.submitted.append(job.job_id)
        self._queue.put(job)
        return job

    def _worker(self) -> None:
        while True:
            job = self._queue.get()
            if self.faults.take("hanging_jobs"):
                job.state = State.JOB_STATE_PROVISIONING_DEVICE
                continue
            try:
                if job.kind == "compile":
                    self._compile(job)
                else:
                    self._run(job)
            except Exception as exc:  # a job's failure is data for the client, never a dead worker
                job.state, job.failure = State.JOB_STATE_FAILED, f"{type(exc).__name__}: {exc}"

    def _compile(self, job: _Job) -> None:
        import onnx

        job.state = State.JOB_STATE_OPTIMIZING_MODEL
        request = job.request.compile_job
        runtime = _option(request.options, "--target_runtime", "tflite")
        if self.faults.take("failing_compiles"):
            raise RuntimeError("compile failed (injected fault)")
        if runtime != "onnx":
            raise ValueError(f"target runtime {runtime!r} cannot be built here: the loopback AI Hub runs "
                             "ONNX models with onnxruntime on the host; use --target_runtime onnx")
        source = self.store.file("models", request.model.model_id)
        onnx.checker.check_model(str(source))  # the "compilation": a valid ONNX model or a failed job
        target = job.target_model
        self.store.file("models", target.model_id).write_bytes(source.read_bytes())
        target.file_upload_complete = True
        with self._lock:
            self.store.models[target.model_id] = target
        job.state = State.JOB_STATE_DONE

    def _run(self, job: _Job) -> None:
        """An inference job: outputs for its dataset (if any) and, with profiling on, a profile."""
        request = job.request.inference_job
        model = self.store.file("models", request.model.model_id)
        work = self.store.folder / "work" / job.job_id
        work.mkdir()
        inputs = [self.store.file("datasets", request.dataset.dataset_id)] if request.dataset.dataset_id else []
        if inputs:
            job.state = State.JOB_STATE_RUNNING_INFERENCE
            outputs = work / "outputs.h5"
            _device("infer", model, work / "inference.json", inputs[0], outputs)
            dataset = self._new_dataset(f"{request.name}-outputs")
            outputs.rename(self.store.file("datasets", dataset.dataset_id))
            dataset.file_upload_complete = True
            job.output_dataset = dataset.dataset_id
        if request.is_profiling_on:
            job.state = State.JOB_STATE_MEASURING_PERFORMANCE
            if self.faults.take("failing_profiles"):
                raise RuntimeError("profiling failed on the device (injected fault)")
            job.profile = _profile_detail(_device("profile", model, work / "profile.json", *inputs))
        job.state = State.JOB_STATE_DONE

    def _new_dataset(self, name: str) -> pb.Dataset:
        dataset = pb.Dataset(dataset_id=self.store.new_id("d"), name=name)
        dataset.creation_time.FromSeconds(int(time.time()))
        dataset.expiration_time.FromSeconds(int(time.time()) + DATASET_LIFETIME_S)
        with self._lock:
            self.store.datasets[dataset.dataset_id] = dataset
        return dataset

    def job_pb(self, job: _Job) -> pb.Job:
        message = pb.Job()
        message.CopyFrom(job.request)
        inner = message.compile_job if job.kind == "compile" else message.inference_job
        if job.kind == "compile":
            inner.compile_job_id = job.job_id
            inner.device.CopyFrom(_device_pb(_named(inner.devices.devices[0].name)))
            inner.target_model.CopyFrom(job.target_model)
            inner.model.CopyFrom(self.store.models[inner.model.model_id])
        else:
            inner.inference_job_id = job.job_id
            inner.device.CopyFrom(_device_pb(_named(inner.device.name)))
            inner.model.CopyFrom(self.store.models[inner.model.model_id])
        inner.job_state = job.state
        inner.failure_reason = job.failure
        return message

    def result_pb(self, job: _Job) -> pb.JobResult:
        if job.kind == "compile":
            return pb.JobResult(compile_job_result=pb.CompileJobResult(compile_job_id=job.job_id))
        result = pb.InferenceJobResult(inference_job_id=job.job_id, output_dataset_id=job.output_dataset)
        if job.profile is not None:
            result.detail.CopyFrom(job.profile)
        return pb.JobResult(inference_job_result=result)



def _named(name: str) -> tuple[str, str, str]:
    return next(d for d in DEVICES if d[0] == name)


def _option(options: str, flag: str, default: str) -> str:
    words = shlex.split(options)
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return default


def _device_pb(device: tuple[str, str, str]) -> pb.Device:
    name, os_version, chipset = device
    return pb.Device(name=name, os=os_version, soc_description=f"emulated on {platform.machine()} with onnxruntime",
                     attributes=[f"chipset:{chipset}", "framework:onnx", "format:phone", "os:android",
                                 "vendor:samsung", EMULATED])


def _device(mode: str, model: Path, result: Path, *files: Path) -> dict:
    process = subprocess.run([sys.executable, "-m", "harness.emulators.aihub.device", mode, str(model), str(result),
                              *map(str, files)], capture_output=True, text=True)
    outcome = json.loads(result.read_text()) if result.is_file() else {}
    if process.returncode != 0 or "error" in outcome:
        lines = process.stderr.strip().splitlines()
        raise RuntimeError(outcome.get("error") or (lines[-1] if lines else f"exit code {process.returncode}"))
    return outcome


def _profile_detail(result: dict) -> pb.ProfileDetail:
    """The device's measurements as AI Hub's ProfileDetail (v1.2: ranges and all times)."""
    r = pb.Range
    detail = pb.ProfileDetail(
        major_version=1, minor_version=2,
        execution_time=result["execution_time"], all_execution_times=result["all_execution_times"],
        cold_load_time=result["cold_load_time"], all_cold_load_times=[result["cold_load_time"]],
        warm_load_time=result["warm_load_time"], all_warm_load_times=[result["warm_load_time"]],
        after_cold_load_peak_memory=result["cold_load_peak"][1],
        after_warm_load_peak_memory=result["warm_load_peak"][1],
        after_execution_peak_memory=result["execution_peak"][1],
        cold_load_memory=pb.ProfileDetail.MemoryUsage(peak=r(lower=result["cold_load_peak"][0],
                                                             upper=result["cold_load_peak"][1])),
        warm_load_memory=pb.ProfileDetail.MemoryUsage(peak=r(lower=result["warm_load_peak"][0],
                                                             upper=result["warm_load_peak"][1])),
        execution_memory=pb.ProfileDetail.MemoryUsage(
            increase=r(lower=max(0, result["execution_increase"][0]), upper=max(0, result["execution_increase"][1])),
            peak=r(lower=result["execution_peak"][0], upper=result["execution_peak"][1])),
    )
    for index, layer in enumerate(result["layers"]):
        detail.layer_details.append(pb.LayerDetail(
            name=layer["name"], layer_type_name=layer["type"], id=str(index), execution_time=layer["time"],
            compute_unit=pb.ComputeUnit.COMPUTE_UNIT_CPU, delegate_name=layer["provider"]))
    return detail


class _Reply(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _handler(service: Emulator) -> type[BaseHTTPRequestHandler]:
    store = service.store

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: a test double, not a web server log
            pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_PATCH(self) -> None:
            self._dispatch("PATCH")

        # -- plumbing ------------------------------------------------------------------
        def _dispatch(self, method: str) -> None:
            url = urlparse(self.path)
            parts = [p for p in url.path.split("/") if p]
            query = parse_qs(url.query)
            try:
                body = self._body()
                if parts[:1] == ["blobs"]:  # upload/download URLs handed out below (no auth, like S3's)
                    return self._blob(method, parts[1:], body)
                if parts[:2] != ["api", "v1"]:
                    raise _Reply(404, f"no route {url.path}")
                if self.headers.get("Authorization") != f"token {service.token}":
                    raise _Reply(401, "Invalid token.")
                self._api(method, parts[2:], query, body)
            except _Reply as reply:
                self._send(reply.status, json.dumps({"detail": reply.detail}).encode(), "application/json")
            except Exception as exc:  # a bug here must reach the client as a 500, not a hung socket
                self._send(500, json.dumps({"detail": f"{type(exc).__name__}: {exc}"}).encode(), "application/json")

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, data: bytes, content_type: str = "application/x-protobuf",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _proto(self, message) -> None:
            self._send(200, message.SerializeToString())

        def _created(self, object_id: str, expires: bool = False) -> None:
            response = pb.CreateUpdateResponse(id=object_id)
            response.creation_time.FromSeconds(int(time.time()))
            if expires:
                response.expiration_time.FromSeconds(int(time.time()) + DATASET_LIFETIME_S)
            self._proto(response)

        def _blob_url(self, *parts: str) -> str:
            return "/".join([service.url, "blobs", *parts])

        def _download(self, kind: str, object_id: str, filename: str) -> None:
            url = pb.FileDownloadURL(url=self._blob_url(kind, object_id), filename=filename)
            self._proto(pb.FileDownloadResponse(url=url))

        # -- routes --------------------------------------------------------------------
        def _api(self, method: str, path: list[str], query: dict, body: bytes) -> None:
            route = (method, *["{}" if i % 2 else p for i, p in enumerate(path)])
            ident = path[1] if len(path) > 1 else ""
            if route == ("GET", "users", "{}", "user") or path == ["users", "auth", "user"]:
                return self._proto(pb.User(id=1, email="emulator@localhost"))
            if route == ("GET", "devices"):
                return self._proto(self._devices(query))
            if route == ("POST", "models"):
                model = pb.Model.FromString(body)
                model.model_id = store.new_id("m")
                model.creation_time.FromSeconds(int(time.time()))
                store.models[model.model_id] = model
                return self._created(model.model_id)
            if route == ("GET", "models", "{}", "multipart_upload"):
                size = int(query.get("file_size", ["0"])[0])
                urls = pb.FileMultipartUploadURL(urls=[self._blob_url("models", self._model(ident).model_id)],
                                                 upload_id=f"u{ident}", max_part_size=max(size, 1))
                return self._proto(pb.FileUploadResponse(multipart_url=urls))
            if route == ("POST", "models", "{}", "multipart_upload"):
                self._model(ident).file_upload_complete = True
                return self._created(ident)
            if route == ("GET", "models", "{}"):
                return self._proto(self._model(ident))
            if route == ("GET", "models", "{}", "download"):
                return self._download("models", self._model(ident).model_id, f"{ident}.onnx")
            if route == ("POST", "datasets"):
                dataset = service._new_dataset(pb.Dataset.FromString(body).name)
                return self._created(dataset.dataset_id, expires=True)
            if route == ("GET", "datasets", "{}", "upload_url"):
                url = pb.FileUploadURL(url=self._blob_url("datasets", self._dataset(ident).dataset_id),
                                       file_field_name="file")
                return self._proto(pb.FileUploadResponse(url=url))
            if route == ("PATCH", "datasets", "{}"):
                self._dataset(ident).file_upload_complete = True
                return self._created(ident, expires=True)
            if route == ("GET", "datasets", "{}"):
                return self._proto(self._dataset(ident))
            if route == ("GET", "datasets", "{}", "download_data"):
                return self._download("datasets", self._dataset(ident).dataset_id, f"{ident}.h5")
            if route == ("POST", "jobs"):
                return self._submit(pb.Job.FromString(body))
            if route == ("GET", "jobs", "{}"):
                return self._proto(service.job_pb(self._job(ident)))
            if route == ("GET", "jobs", "{}", "result"):
                return self._proto(service.result_pb(self._job(ident)))
            if route == ("GET", "frameworks"):
                return self._proto(pb.FrameworkList())
            raise _Reply(404, f"the loopback AI Hub has no route {method} /{'/'.join(path)}/")

        def _devices(self, query: dict) -> pb.DeviceList:
            name = query.get("name", [""])[0]
            wanted = set(query.get("attributes", []))
            found = [_device_pb(d) for d in DEVICES if (not name or d[0] == name)]
            found = [d for d in found if wanted <= set(d.attributes)]
            if query.get("select", ["False"])[0].lower() == "true":
                found = found[:1]
            return pb.DeviceList(devices=found, total_query_count=len(found))

        def _submit(self, request: pb.Job) -> None:
            if service.faults.take("throttled_submissions"):
                service.throttled += 1
                raise _Reply(429, "Request was throttled.")
            inner = request.compile_job if request.WhichOneof("job") == "compile_job" else request.inference_job
            self._model(inner.model.model_id)
            names = [d.name for d in inner.devices.devices] if request.WhichOneof("job") == "compile_job" \
                else [inner.device.name]
            for name in names:
                if not any(d[0] == name for d in DEVICES):
                    raise _Reply(400, f"Device '{name}' is not available.")
            self._created(service.submit(request).job_id)

        def _blob(self, method: str, parts: list[str], body: bytes) -> None:
            kind, ident = parts
            if ident not in {"models": store.models, "datasets": store.datasets}.get(kind, {}):
                raise _Reply(404, f"no such upload: /blobs/{kind}/{ident}")
            path = store.file(kind, ident)
            if method == "PUT":  # a model part (one part: max_part_size is the whole file)
                path.write_bytes(body)
                return self._send(200, b"", "text/plain", {"ETag": f'"{ident}"'})
            if method == "POST":  # a dataset, as a multipart form
                from requests_toolbelt.multipart.decoder import MultipartDecoder

                for part in MultipartDecoder(body, self.headers["Content-Type"]).parts:
                    if b'name="file"' in part.headers.get(b"Content-Disposition", b""):
                        path.write_bytes(part.content)
                return self._send(204, b"", "text/plain")
            if not path.is_file():
                raise _Reply(404, f"no {kind} {ident}")
            self._send(200, path.read_bytes(), "application/octet-stream")

        def _model(self, ident: str) -> pb.Model:
            if ident not in store.models:
                raise _Reply(404, f"Model ID '{ident}' could not be found.")
            return store.models[ident]

        def _dataset(self, ident: str) -> pb.Dataset:
            if ident not in store.datasets:
                raise _Reply(404, f"Dataset ID '{ident}' could not be found.")
            return store.datasets[ident]

        def _job(self, ident: str) -> _Job:
            if ident not in store.jobs:
                raise _Reply(404, f"Job ID '{ident}' could not be found.")
            return store.jobs[ident]

    return Handler


def serve(port: int, client_ini: Path) -> None:
    """`harness aihub-emulator serve`: run until interrupted, with a client.ini for it."""
    import secrets
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly: uploads live in a temporary folder
    service = Emulator(secrets.token_hex(16), port).start()
    client_ini.parent.mkdir(parents=True, exist_ok=True)
    service.client_ini(client_ini)
    print(f"loopback AI Hub at {service.url} (devices emulated with onnxruntime on this host)", flush=True)
    print(f"client configuration: {client_ini} (profile {client_ini.stem!r}; the token is in that file)", flush=True)
    try:
        threading.Event().wait()
    finally:
        service.stop()
