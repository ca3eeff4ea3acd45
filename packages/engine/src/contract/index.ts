/**
 * The engine contract: one suite per port, run against every engine (memory here, Redis in
 * @mrezhen/engine-redis). Call {@link engineContract} inside a test file with a factory.
 */
import { describe } from "vitest";
import { backendApiContract } from "./backend-api.js";
import { groupContract } from "./groups.js";
import type { BackendFactory } from "./harness.js";
import { messageStoreContract } from "./message-store.js";
import { presenceContract } from "./presence.js";
import { quotaContract } from "./quotas.js";
import { rateLimiterContract } from "./rate-limiter.js";
import { reliableDeliveryContract } from "./reliable-delivery.js";

export * from "./harness.js";

export function engineContract(name: string, factory: BackendFactory): void {
  describe(`${name} engine contract`, () => {
    messageStoreContract(factory);
    reliableDeliveryContract(factory);
    presenceContract(factory);
    rateLimiterContract(factory);
    quotaContract(factory);
    backendApiContract(factory);
    groupContract(factory);
  });
}
