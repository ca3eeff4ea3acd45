import { describe, expect, it } from "vitest";
import { startNode } from "./helpers.js";

/** Parses Prometheus text exposition (NaN in any case, as prom-client writes "Nan") into `name{labels}` → value, checking every line's syntax. */
function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("# HELP ") || line.startsWith("# TYPE ")) continue;
    const match =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+-]+|[Nn]a[Nn]|\+Inf|-Inf)$/.exec(line);
    if (match === null) throw new Error(`not Prometheus text: ${line}`);
    const labels = (match[2] ?? "").replace(/,?node_id="[^"]*"/, "").replace("{,", "{");
    samples.set(`${match[1]}${labels === "{}" ? "" : labels}`, Number(match[3]));
  }
  return samples;
}

describe("GET /metrics", () => {
  it("exposes Prometheus text whose counters move as messages flow", async () => {
    const { url, connect } = await startNode({ NODE_ID: "node-metrics", RATE_LIMIT_MESSAGES: "2" });
    const scrape = async () => {
      const response = await fetch(`${url}/metrics`);
      expect(response.headers.get("content-type")).toMatch(/^text\/plain/);
      const text = await response.text();
      expect(text).toContain('node_id="node-metrics"');
      return parsePrometheus(text);
    };
    const before = await scrape();
    expect(before.get("mrezhen_connections")).toBe(0);
    expect(before.get("mrezhen_engine_up")).toBe(1);
    // Node's process metrics under their usual names, as off-the-shelf dashboards query them.
    expect(before.has("nodejs_eventloop_lag_seconds")).toBe(true);
    expect(before.has("process_cpu_seconds_total")).toBe(true);
    expect(before.has("process_resident_memory_bytes")).toBe(true);
    expect([...before.keys()].some((name) => name.startsWith("mrezhen_process_"))).toBe(false);
    expect(before.has("nodejs_active_handles_total")).toBe(false); // a gauge: see metrics.ts
    expect(before.get("mrezhen_offline_flushed_total")).toBe(0);
    // The memory engine has no backend commands to fail.
    expect([...before.keys()].some((name) => name.startsWith("mrezhen_redis_"))).toBe(false);

    const bob = await connect("bob");
    const alice = await connect("alice");
    for (let i = 0; i < 3; i++) alice.send({ type: "direct_message", to: "bob", content: `m${i}` });
    await alice.next("message_ack");
    await alice.next("message_ack");
    expect((await alice.next("error"))["code"]).toBe("RATE_LIMITED");
    alice.send("not json");
    await alice.next("error");
    await bob.next("direct_message");
    await bob.next("direct_message");

    const after = await scrape();
    expect(after.get("mrezhen_connections")).toBe(2);
    expect(after.get('mrezhen_frames_in_total{type="direct_message"}')).toBe(3);
    expect(after.get('mrezhen_frames_in_total{type="invalid"}')).toBe(1);
    expect(after.get('mrezhen_messages_acked_total{status="delivered"}')).toBe(2);
    expect(after.get("mrezhen_messages_delivered_total")).toBe(2);
    expect(after.get("mrezhen_rate_limited_total")).toBe(1);
    expect(after.get('mrezhen_errors_total{code="INVALID_JSON"}')).toBe(1);
    expect(after.get("mrezhen_send_latency_seconds_count")).toBe(2);
    expect(after.get("mrezhen_frames_out_total")).toBeGreaterThanOrEqual(8);

    // Two messages for carol, who is away, then carol comes online and gets them.
    const dave = await connect("dave");
    dave.send({ type: "direct_message", to: "carol", content: "while you were out" });
    dave.send({ type: "direct_message", to: "carol", content: "again" });
    expect(await dave.next("message_ack")).toMatchObject({ status: "queued" });
    expect(await dave.next("message_ack")).toMatchObject({ status: "queued" });
    await connect("carol");
    const later = await scrape();
    expect(later.get('mrezhen_messages_acked_total{status="queued"}')).toBe(2);
    expect(later.get("mrezhen_offline_flushed_total")).toBe(2);
  });
});
