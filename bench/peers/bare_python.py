"""The bare peer: a python-socketio aiohttp app relaying the chat events, without
authentication or storage. A client joins the room named by its ``room`` query;
``message:send`` is acked and sent to the rest of the room as ``message:new``.

    python bench/peers/bare_python.py <port> [--no-compression]

By default it keeps python-socketio's defaults, so WebSocket compression is on when
the client offers it. ``--no-compression`` turns it off the way the hub does (the
hub's own code for it, which imports nothing else of the hub), for a
like-for-like figure of memory per connection.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import socketio
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from hub.compat.engineio import websockets_without_compression  # noqa: E402

sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
rooms: dict[str, str] = {}
seq = 0


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    room = parse_qs(environ.get("QUERY_STRING", "")).get("room", ["lobby"])[0]
    rooms[sid] = room
    await sio.enter_room(sid, room)


@sio.event
async def disconnect(sid: str, *reason: Any) -> None:
    rooms.pop(sid, None)


@sio.on("message:send")
async def message_send(sid: str, payload: dict[str, Any]) -> dict[str, Any]:
    global seq
    seq += 1
    room = rooms[sid]
    message = {
        "conversation_id": room,
        "seq": seq,
        "client_id": payload.get("client_id"),
        "body": payload.get("body"),
    }
    await sio.emit("message:new", {"message": message}, to=room, skip_sid=sid)
    return {"ok": True, "message": message}


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/health", health)
    sio.attach(app)
    if "--no-compression" in sys.argv:
        websockets_without_compression(sio)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8091
    print(f"listening {port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
