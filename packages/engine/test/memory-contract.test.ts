import { createMemoryEngine } from "@mrezhen/engine";
import { engineContract } from "@mrezhen/engine/contract";

engineContract("memory", async ({ rateLimit, retention }) => {
  const engine = createMemoryEngine(
    retention === undefined ? { rateLimit } : { rateLimit, retention },
  );
  return { maxNodes: 1, node: async () => engine, close: () => engine.close() };
});
