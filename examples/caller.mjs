// Calls the greeter service through a client-side load balancer, once a second.
//   node examples/caller.mjs [policy] [calls]   policy: round-robin (default), weighted-round-robin,
//   random, least-outstanding, p2c, consistent-hash
import { MusterClient } from "@muster/client";

const endpoints = (
  process.env.MUSTER_ENDPOINTS ?? "127.0.0.1:7700,127.0.0.1:7710,127.0.0.1:7720"
).split(",");
const policy = process.argv[2] ?? "round-robin";
const calls = Number(process.argv[3] ?? "Infinity");

const client = new MusterClient({ endpoints });
const balancer = client.balancer("greeter", { policy });
const view = balancer.view;
view.on("change", (instances) =>
  console.log(
    `greeter instances: ${instances.map((i) => `${i.address}:${i.port}`).join(", ") || "none"}`,
  ),
);
view.on("stale", (error) =>
  console.log(`registry unreachable, using the last view: ${error.message}`),
);
await view.ready({ timeoutMs: 30_000 });

for (let call = 0; call < calls; call++) {
  try {
    const response = await client.fetch(`http://greeter/hello/${call}`, {
      balancer,
      key: `user-${call % 5}`,
    });
    const body = await response.json();
    console.log(`call ${call}: ${response.status} from port ${body.port}`);
  } catch (error) {
    console.log(`call ${call} failed: ${error.message}`);
  }
  if (call + 1 < calls) await new Promise((resolve) => setTimeout(resolve, 1000));
}
await client.close();
