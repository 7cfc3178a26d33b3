// A service that registers itself with muster and drains on Ctrl-C or SIGTERM.
//   node examples/service.mjs [port]        (against `npm start`; MUSTER_ENDPOINTS to change)
import { createServer } from "node:http";
import { hostname } from "node:os";
import { MusterClient } from "@muster/client";

const endpoints = (
  process.env.MUSTER_ENDPOINTS ?? "127.0.0.1:7700,127.0.0.1:7710,127.0.0.1:7720"
).split(",");
const port = Number(process.argv[2] ?? "0");

const server = createServer((request, response) => {
  response.setHeader("content-type", "application/json");
  response.end(
    JSON.stringify({ hello: "from greeter", port: server.address().port, path: request.url }),
  );
});
await new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
const listening = server.address().port;

const client = new MusterClient({ endpoints });
const registration = await client.register({
  service: "greeter",
  id: `${hostname()}-${listening}`.replace(/[^A-Za-z0-9._-]/g, "-"),
  address: "127.0.0.1",
  port: listening,
  tags: ["http", "v1"],
  ttl: "10s",
  // Reported as the instance's status with every heartbeat.
  check: () => (server.listening ? "passing" : "critical"),
  drainDelay: "2s",
});
registration.on("trouble", (error) => console.error(`registry trouble: ${error.message}`));
registration.on("draining", () => console.log("draining: callers are moving away"));
registration.on("deregistered", () => console.log("deregistered; exiting"));
console.log(`greeter ${registration.id} listening on 127.0.0.1:${listening} and registered`);
