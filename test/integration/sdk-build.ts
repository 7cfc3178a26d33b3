import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

/** Instance processes import the built SDK: build it from the current sources first. */
export default function setup(): void {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const sdk = fileURLToPath(new URL("../../client-sdk/", import.meta.url));
  execFileSync(process.execPath, [tsc, "-p", sdk], { stdio: "inherit" });
}
