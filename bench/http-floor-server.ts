import { createServer, type ServerResponse } from "node:http";

/**
 * One bare node:http server of the watch-latency floors (see http-floor.ts): it parks each
 * GET that asks for an index it has not reached and keeps each GET /stream open as a
 * Server-Sent Events stream; when a POST raises its index, it answers the parked ones from
 * memory with the body it was started with and writes that body as an event to every
 * stream, as an agent does. GET /parked counts both. It says its port over IPC and exits
 * when its parent goes.
 */
const body = process.argv[2] ?? "{}";
const length = String(Buffer.byteLength(body));
let index = 1;
let parked: ServerResponse[] = [];
const streams = new Set<ServerResponse>();

function answer(response: ServerResponse): void {
  response.writeHead(200, {
    "content-type": "application/json; charset=utf-8",
    "content-length": length,
    "x-muster-index": String(index),
  });
  response.end(body);
}

const server = createServer((request, response) => {
  if (request.method === "POST") {
    index++;
    const woken = parked;
    parked = [];
    response.end(String(index));
    for (const one of woken) answer(one);
    for (const stream of streams) stream.write(`id: ${index}\nevent: instances\ndata: ${body}\n\n`);
    return;
  }
  if (request.url === "/parked") {
    response.end(String(parked.length + streams.size));
    return;
  }
  if (request.url?.startsWith("/stream")) {
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    streams.add(response);
    response.on("close", () => streams.delete(response));
    return;
  }
  const asked = Number(/[?&]index=(\d+)/.exec(request.url ?? "")?.[1] ?? 0);
  if (asked < index) answer(response);
  else parked.push(response);
});
server.listen(0, "127.0.0.1", () => {
  const address = server.address();
  if (address !== null && typeof address === "object") process.send?.(address.port);
});
process.on("disconnect", () => process.exit(0));
