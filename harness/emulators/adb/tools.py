"""The device-side tools of an emulated phone: `getprop` and `dumpsys`, as shell scripts.

They print what Android prints (format of Android 14/15), from the sandbox's state files
and, for `dumpsys meminfo`, from the real `/proc/<pid>/smaps_rollup` of the process; `{proc}`
is the folder that lists the device's own processes (its `/proc`).
(Its `time` is `harness/measure/timev.py`, toybox's `time -v` for this host.)
"""

GETPROP = r"""#!/bin/sh
props='{root}/hil/build.prop'
if [ $# -eq 0 ]; then
    sed 's/^\([^=]*\)=\(.*\)$/[\1]: [\2]/' "$props"
    exit 0
fi
awk -F= -v key="$1" -v default="$2" '
    $1 == key {{ sub(/^[^=]*=/, ""); print; found = 1; exit }}
    END {{ if (!found) print default }}' "$props"
"""

DUMPSYS = r"""#!/bin/sh
# Shell builtins only (read, printf, arithmetic) where it is cheap to: the harness polls this.
root='{root}'
hil="$root/hil"
battery="$root/sys/class/power_supply/battery"
value() {{ read -r v < "$1"; }}
temperature() {{  # zone directory, HAL type
    value "$1/temp"; t=$v
    value "$1/type"; name=$v
    printf '\tTemperature{{mValue=%d.%d, mType=%s, mName=%s, mStatus=%s}}\n' $((t / 1000)) $((t % 1000 / 100)) "$2" "$name" "$status"
}}
temperatures() {{
    temperature "$root/sys/class/thermal/thermal_zone0" 0
    temperature "$root/sys/class/thermal/thermal_zone1" 2
    temperature "$root/sys/class/thermal/thermal_zone2" 3
}}
value "$hil/thermal_status"; status=$v
value "$hil/plugged"; plugged=$v
case "$1" in
thermalservice)
    echo "IsStatusOverride: false"
    echo "ThermalEventListeners:"
    printf '\tcallbacks: 1\n\tkilled: false\n\tbroadcasts count: -1\n'
    echo "ThermalStatusListeners:"
    printf '\tcallbacks: 1\n\tkilled: false\n\tbroadcasts count: -1\n'
    echo "Thermal Status: $status"
    echo "Cached temperatures:"
    temperatures
    echo "HAL Ready: true"
    echo "HAL connection:"
    printf '\tThermalHAL AIDL 1  connected: yes\n'
    echo "Current temperatures from HAL:"
    temperatures
    ;;
battery)
    ac=false; usb=false; current=0; voltage=0
    [ "$plugged" = ac ] && ac=true
    [ "$plugged" = usb ] && usb=true
    [ "$plugged" != none ] && current=500000 && voltage=5000000
    value "$battery/status"
    case "$v" in Charging) s=2;; Discharging) s=3;; "Not charging") s=4;; Full) s=5;; *) s=1;; esac
    value "$battery/capacity"; level=$v
    value "$battery/voltage_now"; millivolts=$((v / 1000))
    value "$battery/temp"; tenths=$v
    printf '%s\n' "Current Battery Service state:" "  AC powered: $ac" "  USB powered: $usb" \
        "  Wireless powered: false" "  Max charging current: $current" "  Max charging voltage: $voltage" \
        "  Charge counter: 3880000" "  status: $s" "  health: 2" "  present: true" "  level: $level" \
        "  scale: 100" "  voltage: $millivolts" "  temperature: $tenths" "  technology: Li-ion"
    ;;
power)
    echo "POWER MANAGER (dumpsys power)"
    value "$hil/wakefulness"
    echo "  mWakefulness=$v"
    ;;
meminfo)
    pid="$2"
    if [ -z "$pid" ] || [ ! -e "{proc}/$pid" ]; then echo "No process found for: $pid"; exit 0; fi
    echo "Applications Memory Usage (in Kilobytes):"
    echo "Uptime: $(awk '{{ printf "%d", $1 * 1000 }}' /proc/uptime) Realtime: $(awk '{{ printf "%d", $1 * 1000 }}' /proc/uptime)"
    echo
    echo "** MEMINFO in pid $pid [$(cat "/proc/$pid/comm")] **"
    awk '
        {{ v[$1] = $2 }}
        END {{
            printf "                   Pss  Private  Private  SwapPss      Rss     Heap     Heap     Heap\n"
            printf "                 Total    Dirty    Clean    Dirty    Total     Size    Alloc     Free\n"
            printf "                ------   ------   ------   ------   ------   ------   ------   ------\n"
            printf "           TOTAL %8d %8d %8d %8d %8d %8d %8d %8d\n", v["Pss:"], v["Private_Dirty:"], v["Private_Clean:"], v["SwapPss:"], v["Rss:"], 0, 0, 0
            printf "\n App Summary\n"
            printf "                       Pss(KB)                        Rss(KB)\n"
            printf "                        ------                         ------\n"
            printf "           TOTAL PSS: %8d            TOTAL RSS: %8d       TOTAL SWAP PSS: %8d\n", v["Pss:"], v["Rss:"], v["SwapPss:"]
        }}' "/proc/$pid/smaps_rollup"
    ;;
*)
    echo "Can't find service: $1"
    ;;
esac
"""
