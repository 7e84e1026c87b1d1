"""Qualcomm AI Hub: a loopback test double of the service (the target is harness/targets/aihub.py)."""
