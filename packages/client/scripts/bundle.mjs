// Bundles the SDK into one minified ES module, dist/mrezhen-client.js: what the demo page loads
// (served at /sdk/client.js) and what the size budget measures. One file, because a browser
// cannot resolve the bare "@mrezhen/protocol" import of tsc's output; esbuild inlines the one
// function the SDK takes from it (shouldReconnect), so the bundle has no dependency at all.
// Run by `pnpm build` and `pnpm start` after tsc, and by the tests' global setup.
import { mkdirSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

/** The budget: minified and gzipped, in bytes. */
export const SIZE_LIMIT_BYTES = 6144;

const packageDir = fileURLToPath(new URL("..", import.meta.url));

/** Bundles src/index.ts; returns the code and its gzipped size. Writes it to dist/ if asked. */
export async function bundleClient({ write = false } = {}) {
  const result = await build({
    entryPoints: [`${packageDir}src/index.ts`],
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2022",
    platform: "neutral",
    // The workspace packages' TypeScript sources, as in the tests: never a stale dist.
    conditions: ["mrezhen-source"],
    legalComments: "none",
    write: false,
    logLevel: "silent",
  });
  const code = result.outputFiles[0]?.text ?? "";
  const gzipped = gzipSync(code, { level: 9 }).length;
  if (write) {
    mkdirSync(`${packageDir}dist`, { recursive: true });
    writeFileSync(`${packageDir}dist/mrezhen-client.js`, code);
  }
  return { code, bytes: Buffer.byteLength(code), gzipped };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { bytes, gzipped } = await bundleClient({ write: true });
  console.log(
    `@mrezhen/client: dist/mrezhen-client.js ${bytes} bytes minified, ${gzipped} gzipped (limit ${SIZE_LIMIT_BYTES})`,
  );
  if (gzipped > SIZE_LIMIT_BYTES) process.exit(1);
}
