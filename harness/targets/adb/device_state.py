"""What an Android device says about itself: identity, thermal, battery, clocks, screen.

Parsers for `getprop`, `dumpsys thermalservice|battery|power` and sysfs, the device state
stored with every sample, and the hygiene rules applied before each run (cool down, warn
or fail when charging). Units follow the notes in README: temperatures in degC, battery
current in mA and voltage in mV whatever unit the kernel used.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

# One shell round trip reads the whole state; sections are split on the marker line.
_MARK = "@@hil@@"
STATE_COMMAND = "; ".join((
    "dumpsys thermalservice", f"echo {_MARK}",
    "dumpsys battery", f"echo {_MARK}",
    "for p in /sys/devices/system/cpu/cpufreq/policy*; do read -r f < $p/scaling_cur_freq; echo ${p##*/} $f; done",
    f"echo {_MARK}",
    "dumpsys power | grep -m1 mWakefulness", f"echo {_MARK}",
    "cat /sys/class/power_supply/battery/current_now /sys/class/power_supply/battery/voltage_now",
))
SUPPLY_COMMAND = "cat /sys/class/power_supply/battery/current_now /sys/class/power_supply/battery/voltage_now"
THERMAL_STATUS = ("none", "light", "moderate", "severe", "critical", "emergency", "shutdown")
# Android's Temperature.TYPE_*: -1 unknown; 6, 7, 8 are battery current limiting (BCL) voltage
# in mV, current in mA and percentage, whose values (11900...) are not temperatures.
NOT_TEMPERATURES = {-1, 6, 7, 8}
_TEMPERATURE = re.compile(r"Temperature\{mValue=([-\d.]+), mType=(-?\d+), mName=([^,]+), mStatus=(\d+)\}")


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` output (`[key]: [value]` lines) to a dict."""
    return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]$", text, re.MULTILINE))


@dataclass(frozen=True)
class DeviceState:
    time_s: float  # host clock (time.time) when read
    thermal_status: int | None  # None: the device did not say (unknown, not cool)
    temperatures_c: dict[str, float]  # temperature-type HAL entries only; empty: unknown
    battery_level: int | None
    battery_temp_c: float | None
    battery_status: int | None  # BatteryManager: 2 charging, 3 discharging, 4 not charging, 5 full
    plugged: str  # "ac", "usb", "wireless" or "none"
    current_ma: float | None  # sign as the kernel reports it
    voltage_mv: float | None
    cpu_freq_khz: dict[str, int]
    screen: str | None  # mWakefulness: Awake, Asleep, Dozing
    warnings: list[str] = field(default_factory=list)

    @property
    def charging(self) -> bool:
        return self.plugged != "none"

    @property
    def max_temp_c(self) -> float | None:
        return max(self.temperatures_c.values(), default=None)

    @property
    def unknown(self) -> list[str]:
        """What the thermal gate needs and the device did not report."""
        return [name for name, value in (("thermal status", self.thermal_status), ("temperatures", self.max_temp_c))
                if value is None]

    @property
    def power_w(self) -> float | None:
        if self.current_ma is None or self.voltage_mv is None:
            return None
        return abs(self.current_ma) * self.voltage_mv / 1e6

    def as_dict(self) -> dict:
        return asdict(self)


def parse_state(text: str, time_s: float) -> DeviceState:
    sections = text.split(_MARK + "\n")
    thermal, battery, cpufreq, power, supply = (sections + [""] * 5)[:5]
    status = re.search(r"^Thermal Status: (\d)", thermal, re.MULTILINE)
    # only the HAL's current readings: without that section, the cached ones are old news
    _, _, current_hal = thermal.partition("Current temperatures from HAL:")
    temperatures = {name: float(value) for value, kind, name, _ in _TEMPERATURE.findall(current_hal)
                    if int(kind) not in NOT_TEMPERATURES}
    fields = dict(re.findall(r"^\s+([\w ]+): (.*)$", battery, re.MULTILINE))
    plugged = next((kind for kind, key in (("ac", "AC powered"), ("usb", "USB powered"),
                                           ("wireless", "Wireless powered")) if fields.get(key) == "true"), "none")
    current, voltage = supply_reading(supply)
    screen = re.search(r"mWakefulness=(\w+)", power)
    return DeviceState(
        time_s=time_s,
        thermal_status=int(status[1]) if status else None,
        temperatures_c=temperatures,
        battery_level=_int(fields.get("level")),
        battery_temp_c=None if _int(fields.get("temperature")) is None else _int(fields["temperature"]) / 10,
        battery_status=_int(fields.get("status")),
        plugged=plugged,
        current_ma=current,
        voltage_mv=voltage if voltage is not None else _int(fields.get("voltage")),
        cpu_freq_khz={name: int(freq) for name, freq in re.findall(r"^(policy\d+) (\d+)$", cpufreq, re.MULTILINE)},
        screen=screen[1] if screen else None,
    )


def supply_reading(text: str) -> tuple[float | None, float | None]:
    """`cat current_now voltage_now` -> (mA, mV): uA/uV by the kernel's rule, but some Samsung
    kernels give mA/mV. (None, None) when either file is missing."""
    values = text.split()
    try:
        current, voltage = (float(v) for v in values[:2])
    except ValueError:
        return None, None
    current_ma = current / 1000 if abs(current) > 20_000 else current
    voltage_mv = voltage / 1000 if voltage > 100_000 else voltage
    return current_ma, voltage_mv


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


class BatterySampler:
    """Battery power sampled from sysfs during a runner's timed work, for `energy_j`.

    A thread reads current and voltage every `interval_s` (one small shell command each,
    on its own connection) from when it starts until it stops; `start_window` and
    `end_window` mark the timed work on the same monotonic clock. Energy is the mean of the
    window's power samples (trapezoids between them) times the window's length.
    """

    def __init__(self, phone, interval_s: float = 0.25) -> None:
        self.phone, self.interval_s = phone, interval_s
        self.samples: list[tuple[float, float]] = []  # (time.monotonic(), watts)
        self.window: list[float] = []  # [start] or [start, end]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> BatterySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def start_window(self) -> None:
        self.window = [time.monotonic()]

    def end_window(self) -> None:
        self.window = self.window[:1] + [time.monotonic()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            current_ma, voltage_mv = supply_reading(self.phone.shell(SUPPLY_COMMAND).stdout)
            if current_ma is not None and voltage_mv is not None:
                self.samples.append(((at + time.monotonic()) / 2, abs(current_ma) * voltage_mv / 1e6))
            self._stop.wait(self.interval_s)

    def energy_j(self) -> float | None:
        """Joules over the window; None without a closed window or two power samples inside it."""
        if len(self.window) != 2:
            return None
        start, end = self.window
        inside = [(t, w) for t, w in self.samples if start <= t <= end]
        if len(inside) < 2:
            return None
        area = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(inside, inside[1:]))
        return area / (inside[-1][0] - inside[0][0]) * (end - start)


@dataclass(frozen=True)
class Hygiene:
    """Device state rules before each run: cool down, then warn or fail on what remains."""

    max_thermal_status: int = 1  # 1 = light; above it the device is throttling
    max_temp_c: float = 45.0
    cooldown_s: float = 300.0  # longest wait for the device to cool down
    poll_s: float = 5.0
    charging: Literal["warn", "fail"] = "warn"
    unknown: Literal["warn", "fail"] = "warn"  # a device that does not report its thermal status or temperatures

    def hot(self, state: DeviceState) -> bool:
        """Known to be too hot; what is unknown is judged after the cool-down, by `unknown`."""
        status, temp = state.thermal_status, state.max_temp_c
        return (status is not None and status > self.max_thermal_status) or (temp is not None and temp > self.max_temp_c)

    def settle(self, read: Callable[[], DeviceState], sleep: Callable[[float], None] = time.sleep) -> DeviceState:
        """Wait (up to `cooldown_s`) until the device is cool; raise ValueError if it stays hot
        or charges when that is forbidden. Returns the state, with warnings."""
        start = time.monotonic()
        state = read()
        while self.hot(state) and (left := self.cooldown_s - (time.monotonic() - start)) > 0:
            sleep(min(self.poll_s, left))
            state = read()
        if self.hot(state):
            raise ValueError(
                f"device still hot after {self.cooldown_s:g} s cool-down: thermal status {_status(state.thermal_status)}, "
                f"max temperature {_celsius(state.max_temp_c)} (limits: status {self.max_thermal_status}, "
                f"{self.max_temp_c:g} C)")
        if state.unknown:
            message = f"{' and '.join(state.unknown)} unknown: the device did not report them, so it may be hot"
            if self.unknown == "fail":
                raise ValueError(message)
            state.warnings.append(message)
        if state.charging:
            message = f"charging ({state.plugged}): battery readings are not energy, and charging heats the device"
            if self.charging == "fail":
                raise ValueError(f"device is {message}")
            state.warnings.append(message)
        if time.monotonic() - start > 0.5:
            state.warnings.append(f"cooled down for {time.monotonic() - start:.0f} s")
        return state


def _status(status: int | None) -> str:
    return "unknown" if status is None else f"{status} ({THERMAL_STATUS[status]})"


def _celsius(temp: float | None) -> str:
    return "unknown" if temp is None else f"{temp:.1f} C"
