"""Where variants run: `base` (what a target is), `registry` (the kinds), `local`, `adb/`, `aihub`."""
