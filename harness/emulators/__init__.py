"""Stand-ins for what cannot exist here, spoken to at the protocol level: phones behind a loopback
adb server (`adb/`) and a loopback Qualcomm AI Hub (`aihub/`). Production code never imports them;
only the CLI's emulator commands and the tests do."""
