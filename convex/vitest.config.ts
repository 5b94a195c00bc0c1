import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // convex-test runs the functions in the same runtime flavour Convex uses (no Node APIs).
    environment: "edge-runtime",
    server: { deps: { inline: ["convex-test"] } },
    include: ["tests/**/*.test.ts"],
  },
});
