"""Getting things to people: appointment updates to devices, catch-up after being
offline, and the hub's side of the SMS fallback."""
