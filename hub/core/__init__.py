"""The shared kernel: errors, the wire protocol, settings, metrics, logs, tasks and
the formats every part of the hub shares. It imports nothing else of the project."""
