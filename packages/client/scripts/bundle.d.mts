/** The SDK's size budget: minified and gzipped, in bytes. */
export declare const SIZE_LIMIT_BYTES: number;
/** Bundles the SDK (esbuild, minified ESM); writes dist/mrezhen-client.js when `write`. */
export declare function bundleClient(options?: {
  write?: boolean;
}): Promise<{ code: string; bytes: number; gzipped: number }>;
