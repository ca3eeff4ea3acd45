import { describe, expect, it } from "vitest";
import { bundleClient, SIZE_LIMIT_BYTES } from "../scripts/bundle.mjs";

/**
 * The SDK's size budget, checked on every `pnpm test` (so in CI): src/index.ts bundled and
 * minified by esbuild, gzipped by node:zlib, at most 6 KiB. A browser app pays for every byte.
 */
describe("@mrezhen/client bundle", () => {
  it(`is at most ${SIZE_LIMIT_BYTES} bytes minified and gzipped`, async () => {
    const { code, bytes, gzipped } = await bundleClient();
    console.log(`@mrezhen/client: ${bytes} bytes minified, ${gzipped} bytes gzipped`);
    expect(gzipped).toBeLessThanOrEqual(SIZE_LIMIT_BYTES);
    // Self-contained: no import left for a browser to resolve.
    expect(code).not.toMatch(/\bfrom\s*["']|\bimport\s*\(/);
    expect(code).toContain("MrezhenClient");
  });
});
