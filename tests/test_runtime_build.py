"""How the llama.cpp tools (and the parity peer) are built: CPU flags from /proc/cpuinfo, never assumed."""

from __future__ import annotations

from harness.runtimes.build import cmake_args, cpu_flags

THIS_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 bmi2 fma f16c\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 bmi2 fma f16c\n"
AVX512_CPU = "flags\t\t: avx avx2 bmi2 fma f16c avx512f avx512_vnni amx_tile amx_int8\n"


def test_each_instruction_set_is_on_only_if_the_cpu_has_it() -> None:
    args = cmake_args(cpu_flags(THIS_CPU), "x86_64")
    assert args[0] == "-DGGML_NATIVE=OFF"
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=OFF", "-DGGML_AMX_INT8=OFF"} <= set(args)
    wide = cmake_args(cpu_flags(AVX512_CPU), "x86_64")
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AMX_INT8=ON", "-DGGML_AVX512_BF16=OFF"} <= set(wide)


def test_other_machines_let_the_compiler_detect() -> None:
    assert cmake_args(set(), "aarch64") == ["-DGGML_NATIVE=ON"]
