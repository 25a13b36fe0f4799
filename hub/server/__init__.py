"""The hub process: the aiohttp application, the CLI, the HTTP routes and the
embedded servers. It wires every other part together."""
