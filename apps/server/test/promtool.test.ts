/**
 * The monitoring that ships with Mrezhen, checked by Prometheus' own tool against real nodes:
 * a scrape passes `promtool check metrics`; docs/prometheus (alerts, their unit tests, the scrape
 * config) passes `promtool check config` and `promtool test rules`; and every metric that the
 * alerts and the Grafana dashboard query is one a node really serves, in PromQL that parses.
 * Without promtool the tests skip loudly (Debian: `apt-get install prometheus`); under CI=true a
 * missing promtool is a failure.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { startNode, type TestNode } from "./helpers.js";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const prometheusDir = path.join(root, "docs/prometheus");
const dashboardFile = path.join(root, "docs/grafana/mrezhen.json");

const havePromtool = spawnSync("promtool", ["--version"]).status === 0;
if (!havePromtool) {
  const why = "promtool is not installed (Debian: apt-get install -y prometheus)";
  if (process.env["CI"] === "true") throw new Error(`${why}; under CI=true this is a failure.`);
  console.warn(`\n⚠️  SKIPPING promtool checks: ${why}.\n`);
}

const redis = havePromtool ? await redisForTests() : undefined;
afterAll(() => redis?.close());

function promtool(args: string[], input?: string) {
  const result = spawnSync("promtool", args, { cwd: prometheusDir, encoding: "utf8", input });
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

/** Sends a little of everything through `node`, so that labelled series exist, then scrapes it. */
async function exercise(node: TestNode): Promise<string> {
  const alice = await node.connect("alice");
  const bob = await node.connect("bob");
  alice.send({ type: "direct_message", to: "bob", content: "hello" });
  await alice.next("message_ack");
  await bob.next("direct_message");
  alice.send({ type: "direct_message", to: "carol", content: "for later" });
  await alice.next("message_ack");
  alice.send("not json");
  await alice.next("error");
  return (await fetch(`${node.url}/metrics`)).text();
}

/** Metric names a scrape holds: every sample's name, and its histogram's base name. */
function namesIn(scrape: string): Set<string> {
  const names = new Set<string>(["up"]); // written by Prometheus itself for every target
  for (const match of scrape.matchAll(/^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/gm)) {
    names.add(match[1] as string);
  }
  // A metric declared with no sample yet is served all the same: the GC histogram has none
  // until the node's first garbage collection, which a short test may not reach.
  for (const match of scrape.matchAll(/^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$/gm)) {
    const [, name, type] = match as unknown as [string, string, string];
    names.add(name);
    if (type === "histogram" || type === "summary") {
      for (const suffix of ["_sum", "_count", "_bucket"]) names.add(`${name}${suffix}`);
    }
  }
  return names;
}

/** The metric names a PromQL expression refers to (identifiers followed by `{` or `[`, or alone). */
function metricsIn(expr: string): string[] {
  const withoutStrings = expr.replace(/"[^"]*"/g, '""');
  const words =
    withoutStrings.match(/[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*[{[]|\s*\)|\s*[<>=!]|$)/g) ?? [];
  // Prometheus' own `up`, and the prefixes of what a node serves (its own, prom-client's).
  return words.filter((word) => /^(mrezhen_|nodejs_|process_)|^up$/.test(word));
}

/** Every `expr` of alerts.yml (a block scalar or a one-line value). */
function alertExpressions(): string[] {
  const text = readFileSync(path.join(prometheusDir, "alerts.yml"), "utf8");
  const exprs: string[] = [];
  const lines = text.split("\n");
  lines.forEach((line, i) => {
    const match = /^(\s*)expr:\s*(.*)$/.exec(line);
    if (match === null) return;
    if (match[2] !== "|") {
      exprs.push(match[2] as string);
      return;
    }
    const block: string[] = [];
    for (let j = i + 1; j < lines.length && /^\s{10,}\S/.test(lines[j] as string); j++) {
      block.push((lines[j] as string).trim());
    }
    exprs.push(block.join(" "));
  });
  return exprs;
}

/** Every PromQL query of the dashboard, with Grafana's variables given values Prometheus parses. */
function dashboardExpressions(): string[] {
  const dashboard = JSON.parse(readFileSync(dashboardFile, "utf8")) as {
    panels: { targets?: { expr: string }[] }[];
  };
  return dashboard.panels
    .flatMap((panel) => panel.targets ?? [])
    .map((target) =>
      target.expr.replaceAll("$__rate_interval", "5m").replaceAll("$job", "mrezhen"),
    );
}

describe.skipIf(!havePromtool)("promtool", () => {
  /** What the scrapes of the first test served, for the last one. */
  const scrapes: { engine: string; text: string }[] = [];

  it("passes `promtool check metrics` on a scrape of a real node, on each engine", async () => {
    scrapes.push({ engine: "memory", text: await exercise(await startNode({ NODE_ID: "m" })) });
    if (redis !== undefined) {
      const env = { NODE_ID: "r", REDIS_URL: redis.url, REDIS_KEY_PREFIX: redis.prefix };
      scrapes.push({ engine: "redis", text: await exercise(await startNode(env)) });
    }
    for (const { engine, text } of scrapes) {
      const result = promtool(["check", "metrics"], text);
      expect(result.output, `${engine} engine`).toBe("");
      expect(result.status, `${engine} engine`).toBe(0);
    }
  });

  it("passes `promtool check config` on the example scrape config and its alerting rules", () => {
    const result = promtool(["check", "config", "prometheus.yml"]);
    expect(result.output).toMatch(/SUCCESS: \d+ rules found/);
    expect(result.status).toBe(0);
  });

  it("passes the alerts' unit tests (`promtool test rules alerts.test.yml`)", () => {
    const result = promtool(["test", "rules", "alerts.test.yml"]);
    expect(result.output).toContain("SUCCESS");
    expect(result.status).toBe(0);
  });

  it("alerts and dashboard query metrics a node serves, in PromQL that parses", () => {
    expect(scrapes.length).toBeGreaterThan(0);
    const served = new Set(scrapes.flatMap(({ text }) => [...namesIn(text)]));
    const queries = [...alertExpressions(), ...dashboardExpressions()];
    expect(queries.length).toBeGreaterThan(20);
    const unknown = queries.flatMap(metricsIn).filter((name) => !served.has(name));
    // The Redis metric exists only on a Redis node: without a Redis for tests it cannot be seen.
    const expectedMissing = redis === undefined ? ["mrezhen_redis_command_errors_total"] : [];
    expect([...new Set(unknown)].filter((name) => !expectedMissing.includes(name))).toEqual([]);

    // Every dashboard query, as a recording rule, for promtool to parse.
    const dir = mkdtempSync(path.join(tmpdir(), "mrezhen-promql-"));
    try {
      const rules = dashboardExpressions()
        .map(
          (expr, i) =>
            `      - record: dashboard:query_${i}\n        expr: ${JSON.stringify(expr)}`,
        )
        .join("\n");
      const file = path.join(dir, "dashboard.rules.yml");
      writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${rules}\n`);
      const result = promtool(["check", "rules", file]);
      expect(result.output).toMatch(/SUCCESS: \d+ rules found/);
      expect(result.status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
