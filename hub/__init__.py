"""The clinic hub process: settings, app factory, auth, CLI and HTTP routes."""
