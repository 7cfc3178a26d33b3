import { createServer, type ServerResponse } from "node:http";

/**
 * One bare node:http server of the watch-latency floor (see http-floor.ts): it parks each
 * GET that asks for an index it has not reached and, when a POST raises its index, answers
 * all of them from memory with the body it was started with. GET /parked counts them. It
 * says its port over IPC and exits when its parent goes.
 */
const body = process.argv[2] ?? "{}";
const length = String(Buffer.byteLength(body));
let index = 1;
let parked: ServerResponse[] = [];

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
    return;
  }
  if (request.url === "/parked") {
    response.end(String(parked.length));
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
