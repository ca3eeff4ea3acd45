import { createMemoryEngine } from "@mrezhen/engine";
import { engineContract } from "@mrezhen/engine/contract";

engineContract("memory", async ({ rateLimit }) => {
  const engine = createMemoryEngine({ rateLimit });
  return { maxNodes: 1, node: async () => engine, close: () => engine.close() };
});
