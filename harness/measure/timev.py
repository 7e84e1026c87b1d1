"""toybox's `time -v` (toys/other/time.c) for this host: run a command, then print the kernel's
rusage of it to stderr in toybox's words; exit with the command's code.

    python -S harness/measure/timev.py -v COMMAND [ARGS...]

A phone runs a native tool under its own toybox `time -v`; the local target and the
emulated phones run it under this one, so one parser reads "Max RSS (KiB)" everywhere.
Why a process of its own: ru_maxrss counts the memory a process had before its exec, and
a child started from the harness (vfork or fork) starts with the harness's high-water
mark. Forked from this small process, the tool's figure is its own (with this script's
~8 MB as a floor, as toybox's is on a phone). Standard library only, run with -S.
"""

import os
import re
import sys
import time

_LINE = re.compile(r"^([A-Z][A-Za-z ]+(?: \((?:s|KiB)\))?): ([\d.]+)$", re.M)


def split(stderr: str) -> tuple[str, dict[str, float]]:
    """A command's stderr under `time -v` -> (its own stderr, the report's numbers by label:
    "Real time (s)", "Max RSS (KiB)", ...; empty without a report)."""
    at = stderr.rfind("Real time (s): ")
    if at < 0:
        return stderr, {}
    return stderr[:at], {label: float(value) for label, value in _LINE.findall(stderr[at:])}


def main(argv: list[str]) -> int:
    verbose = argv[:1] == ["-v"]
    command = argv[1:] if argv[:1] in (["-v"], ["-p"]) else argv
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"time: exec {command[0]}: {exc.strerror}", file=sys.stderr)
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    real = time.monotonic() - start
    if verbose:
        sys.stderr.write(
            f"Real time (s): {real:.6f}\nUser time (s): {ru.ru_utime:.6f}\nSystem time (s): {ru.ru_stime:.6f}\n"
            f"Max RSS (KiB): {ru.ru_maxrss}\nMajor faults: {ru.ru_majflt}\nMinor faults: {ru.ru_minflt}\n"
            f"File system inputs: {ru.ru_inblock}\nFile system outputs: {ru.ru_oublock}\n"
            f"Voluntary context switches: {ru.ru_nvcsw}\nInvoluntary context switches: {ru.ru_nivcsw}\n")
    else:
        sys.stderr.write(f"real {real:.3f}\nuser {ru.ru_utime:.3f}\nsys {ru.ru_stime:.3f}\n")
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else os.WTERMSIG(status)  # as toybox: the signal's number


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
