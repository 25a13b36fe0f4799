"""The official JavaScript client (npm socket.io-client v4) against a real hub."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from tests.support.hubs import HubFixture

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "e2e" / "js" / "chat_flow.mjs"


async def test_official_js_client_sends_receives_reconnects_and_syncs(hub: HubFixture):
    node = shutil.which("node")
    assert node, "Node.js 20+ is required for this test (see README)"
    assert (ROOT / "node_modules" / "socket.io-client").is_dir(), "run `npm ci` first"
    doctor_id, patient_id = hub.user("doc"), hub.user("pat")
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        str(hub.servers[0].make_url("/")),
        hub.token(doctor_id, "doctor"),
        hub.token(patient_id, "patient"),
        patient_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["sent_seq"] == 1
    assert result["doctor_received"] == "from js"
    assert result["synced"] == ["while away"]
    assert '"code":"unauthorized"' in result["refusal"]
