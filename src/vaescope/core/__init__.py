"""The bottom layer: errors, atomic storage, the config dataclasses and presets, the machine (device, threads), provenance."""
