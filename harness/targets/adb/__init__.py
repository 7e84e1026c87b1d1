"""Android phones over adb: the client (`client`), device state and hygiene (`device_state`),
runtime adapters (`runtimes`) and the target (`target`)."""
