import { createMemoryEngine } from "@mrezhen/engine";
import { engineContract } from "@mrezhen/engine/contract";

engineContract("memory", async ({ rateLimit, retention, quotas, groups }) => {
  const engine = createMemoryEngine({
    rateLimit,
    ...(groups === undefined ? {} : { groups }),
    ...(retention === undefined ? {} : { retention }),
    ...(quotas === undefined ? {} : { quotas }),
  });
  return { maxNodes: 1, node: async () => engine, close: () => engine.close() };
});
