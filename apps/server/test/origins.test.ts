import { ConfigError, loadConfig } from "@mrezhen/server";
import { mintToken } from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { startNode } from "./helpers.js";
import { upgrade } from "./idp.js";

const ALLOWED = "https://app.example.com, https://*.example.org, http://localhost:8080";

describe("ALLOWED_ORIGINS, through the real upgrade", () => {
  it.each([
    ["an exact origin", "https://app.example.com"],
    ["an exact origin, whatever the case", "https://APP.example.com"],
    ["a subdomain of a wildcard", "https://chat.example.org"],
    ["a deeper subdomain of a wildcard", "https://eu.chat.example.org"],
    ["an exact origin with its port", "http://localhost:8080"],
  ])("allows %s", async (_name, origin) => {
    const { wsUrl } = await startNode({ ALLOWED_ORIGINS: ALLOWED });
    const token = await mintToken({ sub: "alice" });
    expect(await upgrade(wsUrl, { token, origin })).toEqual({ status: 101, body: "" });
  });

  it.each([
    ["another site", "https://evil.example.net"],
    ["the wildcard's own domain (not a subdomain)", "https://example.org"],
    ["a look-alike domain", "https://evilexample.org"],
    ["a suffix trick", "https://app.example.com.evil.net"],
    ["another scheme", "http://app.example.com"],
    ["another port", "https://app.example.com:8443"],
    ["a sandboxed or file: page", "null"],
  ])("refuses %s with 403, before looking at the token", async (_name, origin) => {
    const { wsUrl, url } = await startNode({ ALLOWED_ORIGINS: ALLOWED });
    const token = await mintToken({ sub: "alice" });
    expect(await upgrade(wsUrl, { token, origin })).toEqual({
      status: 403,
      body: "Forbidden: origin not allowed.",
    });
    // Even without a valid token: a foreign page learns nothing about the one it sent.
    expect((await upgrade(wsUrl, { token: "forged", origin })).status).toBe(403);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(
      /mrezhen_upgrades_refused_total\{[^}]*reason="forbidden_origin"[^}]*\} 2\b/,
    );
  });

  it("allows an upgrade without Origin (not a browser): the token decides", async () => {
    const { wsUrl } = await startNode({ ALLOWED_ORIGINS: ALLOWED });
    expect(await upgrade(wsUrl, { token: await mintToken({ sub: "alice" }) })).toEqual({
      status: 101,
      body: "",
    });
    expect((await upgrade(wsUrl, { token: "forged" })).status).toBe(401);
  });

  it("allows the node's own origin, so the demo page it serves works with any list", async () => {
    const { wsUrl, url } = await startNode({ ALLOWED_ORIGINS: "https://app.example.com" });
    const token = await mintToken({ sub: "alice" });
    // The page at http://127.0.0.1:<port>/ connects to ws://127.0.0.1:<port>/ws.
    expect(await upgrade(wsUrl, { token, origin: url })).toEqual({ status: 101, body: "" });
  });

  it("allows every origin when unset", async () => {
    const { wsUrl } = await startNode();
    const token = await mintToken({ sub: "alice" });
    expect((await upgrade(wsUrl, { token, origin: "https://anywhere.test" })).status).toBe(101);
  });

  it.each([
    "https://app.example.com/",
    "https://app.example.com/path",
    "app.example.com",
    "https://*example.com",
    "https://app.*.example.com",
    ",",
  ])("refuses ALLOWED_ORIGINS=%s at start-up, naming the variable", (value) => {
    expect(() => loadConfig({ ALLOWED_ORIGINS: value })).toThrow(ConfigError);
    expect(() => loadConfig({ ALLOWED_ORIGINS: value })).toThrow(/^ALLOWED_ORIGINS/);
  });
});
