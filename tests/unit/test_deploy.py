"""The deployment files, checked without a Docker engine: docker-compose.yml, the
nginx config, the Dockerfile and .env.example against what the hub really reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
HUBS = ("hub-a", "hub-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def resolve(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, for the values used here."""

    def one(match: re.Match[str]) -> str:
        name, rest = match.group(1), match.group(0)[len(match.group(1)) + 2 : -1]
        if env.get(name):
            return env[name]
        if rest.startswith((":-", "-")):
            return rest.split("-", 1)[1]
        raise AssertionError(f"{name} is required")

    return INTERPOLATION.sub(one, value)


def test_every_service_the_hub_needs_is_there_with_a_health_check(compose: dict[str, Any]):
    services = compose["services"]
    assert {"mongo", "redis", *HUBS, "worker", "nginx", "ollama"} <= set(services)
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    assert re.fullmatch(r"mongo:(\d+)\.\d+", services["mongo"]["image"])
    assert int(services["mongo"]["image"].split(":")[1].split(".")[0]) >= 8  # bulkWrite
    assert "mongo-data:/data/db" in services["mongo"]["volumes"]
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    assert any(v.endswith(":/root/.ollama") for v in services["ollama"]["volumes"])
    assert set(compose["volumes"]) >= {"mongo-data", "redis-data", "ollama-models"}


def test_hubs_and_worker_wait_for_their_dependencies(compose: dict[str, Any]):
    services = compose["services"]
    for name in (*HUBS, "worker"):
        depends = services[name]["depends_on"]
        for dependency in ("mongo", "redis"):
            assert depends[dependency]["condition"] == "service_healthy", name
        assert services[name]["environment"]["HUB_EMBEDDED"] == "0"
    assert services["worker"]["command"] == ["python", "-m", "hub", "worker"]
    for name in HUBS:
        assert services["nginx"]["depends_on"][name]["condition"] == "service_healthy"


def test_every_variable_in_the_compose_file_is_one_the_hub_reads(compose: dict[str, Any]):
    known = Settings.variables()
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(INTERPOLATION.findall(text))
    for service in compose["services"].values():
        used |= set(service.get("environment", {}))
    hub_variables = {name for name in used if name.startswith(("HUB_", "TWILIO_"))}
    assert hub_variables, "no hub variables found: the test reads the wrong thing"
    assert hub_variables <= known, sorted(hub_variables - known)


def test_the_hubs_environment_is_valid_settings(compose: dict[str, Any]):
    """What compose gives the hub, with only HUB_JWT_SECRET set, starts a real hub."""
    environment = compose["services"]["hub-a"]["environment"]
    env = {
        name: resolve(str(value), {"HUB_JWT_SECRET": "s" * 40})
        for name, value in environment.items()
    }
    settings = Settings.from_env(env)
    assert not settings.embedded and settings.mongodb_url and settings.redis_url
    assert settings.assistant.ollama_host == "http://ollama:11434"
    with pytest.raises(AssertionError, match="HUB_JWT_SECRET"):
        resolve(environment["HUB_JWT_SECRET"], {})


def test_nginx_passes_websocket_upgrades_and_is_sticky(compose: dict[str, Any]):
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = re.sub(r"#.*", "", conf)
    upstream = re.search(r"upstream hub \{(.*?)\}", conf, re.S)
    assert upstream is not None
    assert re.search(r"^\s*ip_hash;", upstream.group(1), re.M)
    servers = set(re.findall(r"server ([\w-]+):8080", upstream.group(1)))
    assert servers == set(HUBS)
    location = re.search(r"location / \{(.*?)\}", conf, re.S)
    assert location is not None
    body = location.group(1)
    assert "proxy_pass http://hub;" in body
    assert "proxy_http_version 1.1;" in body
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", body)
    assert re.search(r"proxy_set_header Connection \$connection_upgrade;", body)
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{[^}]*default upgrade;", conf)
    timeout = re.search(r"proxy_read_timeout (\d+)s;", body)
    assert timeout is not None and int(timeout.group(1)) > 25 + 20  # ping interval+timeout
    mount = compose["services"]["nginx"]["volumes"][0]
    assert mount.startswith("./deploy/nginx.conf:")


def test_dockerfile_runs_the_hub_as_a_non_root_user():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'CMD ["python", "-m", "hub", "serve"]' in final
    assert any("HUB_EMBEDDED=0" in line for line in final)
    # The console's SDK bundle is built into the image (no node_modules there).
    assert any("hub-client.js hub/server/web/vendor/" in line for line in lines)


def test_env_example_documents_every_variable_and_is_valid():
    text = (ROOT / ".env.example").read_text()
    documented = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", text, re.M))
    known = Settings.variables()
    assert set(documented) == known, (
        sorted(known - set(documented)),
        sorted(set(documented) - known),
    )
    Settings.from_env(documented)  # its defaults are accepted as they stand


def test_the_configuration_page_documents_every_variable_once():
    """docs/configuration.md has one row per variable the hub reads, and no other."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table, _, _ = text.partition("## Removed")
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.M)
    assert len(rows) == len(set(rows)), sorted(r for r in rows if rows.count(r) > 1)
    known = Settings.variables()
    assert set(rows) == known, (sorted(known - set(rows)), sorted(set(rows) - known))
