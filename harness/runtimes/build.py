"""llama.cpp's tools built on this host, once, from the tree the pinned llama-cpp-python vendors.

    python -m harness.runtimes.build               # builds if needed; prints the binaries' folder
    python -m harness.runtimes.build --cmake-args  # the CPU flags alone (the Makefile builds the peer with them)

The tools are the commit of the parity peer (llama-cpp-python's own build), so both
agree. The tree's LoRA converter (`convert_lora_to_gguf.py`, with its `conversion/` and
`gguf-py/`) is kept beside them, in `convert/`. x86 instruction sets come from /proc/cpuinfo: each one ggml can use is ON only if
this CPU has it (an AVX-512 build dies with SIGILL on a CPU without AVX-512). A build
lands in ~/.cache/hil-harness/llama.cpp/<version>-<hash of its flags>/ and is reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TOOLS = ("llama-completion", "llama-simple", "llama-batched", "llama-lookahead", "llama-lookup", "llama-quantize",
         "llama-perplexity")
CONVERTER = ("convert_lora_to_gguf.py", "conversion", "gguf-py")  # from the tree's root
PEER = "llama-cpp-python"
# ggml's x86 options (ggml/CMakeLists.txt) and the /proc/cpuinfo flag each needs
X86 = {"GGML_AVX": "avx", "GGML_AVX_VNNI": "avx_vnni", "GGML_AVX2": "avx2", "GGML_BMI2": "bmi2", "GGML_FMA": "fma",
       "GGML_F16C": "f16c", "GGML_AVX512": "avx512f", "GGML_AVX512_VBMI": "avx512vbmi",
       "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16", "GGML_AMX_TILE": "amx_tile",
       "GGML_AMX_INT8": "amx_int8", "GGML_AMX_BF16": "amx_bf16"}
# offline (no downloads), and static: one self-contained file per tool, to copy or push anywhere
FIXED = ["-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF",
         "-DBUILD_SHARED_LIBS=OFF"]


def cpu_flags(cpuinfo: str) -> set[str]:
    return {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cmake_args(flags: set[str], machine: str) -> list[str]:
    """ggml's instruction-set options for this CPU; elsewhere than x86-64 the compiler's own detection."""
    if machine not in ("x86_64", "AMD64"):
        return ["-DGGML_NATIVE=ON"]
    return ["-DGGML_NATIVE=OFF"] + [f"-D{option}={'ON' if flag in flags else 'OFF'}" for option, flag in X86.items()]


def host_cmake_args() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    return cmake_args(cpu_flags(cpuinfo.read_text() if cpuinfo.exists() else ""), platform.machine())


def build(cache: Path = Path.home() / ".cache" / "hil-harness" / "llama.cpp") -> Path:
    """The folder with TOOLS, built unless a build with the same version and flags is cached."""
    version = importlib.metadata.version(PEER)
    args = host_cmake_args()
    folder = cache / f"{version}-{hashlib.sha256(' '.join(args + FIXED).encode()).hexdigest()[:12]}"
    binaries, converter = folder / "bin", folder / "convert"
    if all((binaries / tool).is_file() for tool in TOOLS) and (converter / CONVERTER[0]).is_file():
        return binaries
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"{PEER}=={version}", "-d", str(work)], check=True)
        [sdist] = work.glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        [source] = work.glob("*/vendor/llama.cpp")
        for name in CONVERTER:
            if (source / name).is_dir():
                shutil.copytree(source / name, converter / name, dirs_exist_ok=True)
            else:
                converter.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, converter / name)
        if all((binaries / tool).is_file() for tool in TOOLS):
            return binaries
        build_dir = work / "build"
        subprocess.run(["cmake", "-S", str(source), "-B", str(build_dir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                        *args, *FIXED], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["ninja", "-C", str(build_dir), f"-j{os.cpu_count() or 1}", *TOOLS], check=True,
                       stdout=subprocess.DEVNULL)
        binaries.mkdir(parents=True, exist_ok=True)
        for tool in TOOLS:
            (build_dir / "bin" / tool).replace(binaries / tool)
        (folder / "cmake-args.txt").write_text(" ".join(args + FIXED) + "\n")
    return binaries


def main(argv: list[str]) -> int:
    print(" ".join(host_cmake_args()) if argv == ["--cmake-args"] else build())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
