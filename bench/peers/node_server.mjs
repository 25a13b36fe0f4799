// The reference peer: the official Socket.IO server for Node relaying the chat events,
// without authentication or storage. A client joins the room named by its `room`
// query; message:send is acked and sent to the rest of the room as message:new.
//
//   node bench/peers/node_server.mjs <port>
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] || 8090);
const httpServer = createServer((request, response) => {
  response.writeHead(request.url === "/health" ? 200 : 404).end();
});
const io = new Server(httpServer, { transports: ["websocket", "polling"] });
let seq = 0;
io.on("connection", (socket) => {
  const room = String(socket.handshake.query.room || "lobby");
  socket.join(room);
  socket.on("message:send", (payload, ack) => {
    seq += 1;
    const message = { conversation_id: room, seq, client_id: payload.client_id, body: payload.body };
    socket.to(room).emit("message:new", { message });
    if (typeof ack === "function") ack({ ok: true, message });
  });
});
httpServer.listen(port, "127.0.0.1", () => process.stdout.write(`listening ${port}\n`));
process.on("SIGTERM", () => { io.close(); process.exit(0); });
