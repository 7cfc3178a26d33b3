import { createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { refused } from "./workload.js";

const servers: Server[] = [];
const sockets: Socket[] = [];

async function listen(onConnection?: (socket: Socket) => void): Promise<number> {
  const server = createServer((socket) => {
    sockets.push(socket);
    onConnection?.(socket);
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

async function failure(port: number): Promise<unknown> {
  return fetch(`http://127.0.0.1:${port}/v1/services/s/instances/x`, {
    method: "PUT",
    body: "{}",
    signal: AbortSignal.timeout(5000),
  }).then(
    () => null,
    (error: unknown) => error,
  );
}

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await Promise.all(
    servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))),
  );
});

describe("a failed request's outcome", () => {
  it("is known not to have happened when the node refused the connection", async () => {
    const port = await listen();
    await new Promise((resolve) => servers.pop()?.close(resolve));
    expect(refused(await failure(port))).toBe(true);
  });

  it("is unknown when the connection dropped after the request was sent", async () => {
    const port = await listen((socket) => socket.once("data", () => socket.destroy()));
    const error = await failure(port);
    expect(error).toBeInstanceOf(Error);
    expect(refused(error)).toBe(false);
  });

  it("is unknown when the node took the connection and never answered", async () => {
    const port = await listen();
    const error = await fetch(`http://127.0.0.1:${port}/`, {
      signal: AbortSignal.timeout(200),
    }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(Error);
    expect(refused(error)).toBe(false);
  });
});
