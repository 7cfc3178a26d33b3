import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts", "client-sdk/test/**/*.test.ts"],
    environment: "node",
    testTimeout: 120_000,
    // Hooks start and stop clusters of real processes, which is slow on a busy machine.
    hookTimeout: 120_000,
    pool: "forks",
    globalSetup: ["test/integration/sdk-build.ts"],
  },
});
