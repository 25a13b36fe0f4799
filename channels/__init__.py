"""Everything Redis: key and channel names, presence, cross-process fan-out."""
