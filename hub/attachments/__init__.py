"""Attachments: uploads sniffed, scanned, stripped and released; served to members only."""
