"""What the tests share: fakes of outside services, clients, hubs and scenarios.

Helpers live here, not in test modules, so that no test module imports another."""
