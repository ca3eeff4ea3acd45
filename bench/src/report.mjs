// Turns the load generator's slice records into result rows, paired ratios and a table.
import { PEER_SYSTEMS } from "./plan.mjs";
import { spread } from "./stats.mjs";

const METRICS = ["msgsPerSec", "p50Ms", "p99Ms", "cpuUsPerMsg", "kibPerIdleConn"];

const median = (records, key) => spread(records.map((r) => r[key]))?.median ?? null;
const sum = (records, key) => records.reduce((n, r) => n + (r[key] ?? 0), 0);

/**
 * One `result` row per (scenario, system): medians over the measured slices (absolute figures, for
 * this run only), and one `ratio` row per (scenario, peer): Mrezhen ÷ peer computed slice by slice
 * within each cycle, then summarised as median, min and max over the cycles.
 */
export function buildRows(records, systems) {
  const byId = new Map(systems.map((s) => [s.id, s]));
  const rows = [];
  for (const scenario of [...new Set(records.map((r) => r.scenario))]) {
    const mine = records.filter((r) => r.scenario === scenario);
    for (const systemId of [...new Set(mine.map((r) => r.systemId))]) {
      const sys = byId.get(systemId);
      const slices = mine.filter((r) => r.systemId === systemId);
      const rate = spread(slices.map((r) => r.msgsPerSec));
      rows.push({
        kind: "result",
        scenario,
        system: sys.system,
        nodes: sys.nodes.length,
        engine: sys.engine,
        msgsPerSec: rate?.median ?? null,
        p50Ms: median(slices, "p50Ms"),
        p99Ms: median(slices, "p99Ms"),
        cpuUsPerMsg: median(slices, "cpuUsPerMsg"),
        rssMiB: Math.max(...slices.map((r) => r.rssMiB)),
        kibPerIdleConn: median(slices, "kibPerIdleConn"),
        slices: slices.length,
        msgsPerSecMin: rate?.min ?? null,
        msgsPerSecMax: rate?.max ?? null,
        redisCpuUsPerMsg: median(slices, "redisCpuUsPerMsg") ?? undefined,
        serverCpuPct: median(slices, "serverCpuPct"),
        serverCoreBusyPct: median(slices, "serverCoreBusyPct") ?? undefined,
        loadgenCpuPct: median(slices, "loadgenCpuPct"),
        idleConnections: slices[0]?.connections,
        errors: sum(slices, "errors"),
        lost: sum(slices, "lost"),
        shed: sum(slices, "shed"),
        lastError: slices.find((r) => r.lastError)?.lastError,
        // groups: the longest Redis script of any slice (SLOWLOG), and the p99 of the worst one.
        ...(slices.some((r) => r.slowlogMaxUs !== undefined)
          ? {
              slowlogMaxUs: Math.max(...slices.map((r) => r.slowlogMaxUs ?? 0)),
              slowlogMedianUs: median(slices, "slowlogMedianUs"),
              slowlogLogged: sum(slices, "slowlogLogged"),
              slowlogOverBudget: sum(slices, "slowlogOverBudget"),
              redisPreempted: slices.every((r) => r.redisPreempted !== undefined)
                ? sum(slices, "redisPreempted")
                : undefined,
              slowlogCommand: slices.reduce((a, b) =>
                (b.slowlogMaxUs ?? 0) > (a.slowlogMaxUs ?? 0) ? b : a,
              ).slowlogCommand,
            }
          : {}),
        p99MsMax: Math.max(...slices.map((r) => r.p99Ms ?? 0)),
      });
    }
    rows.push(...ratioRows(scenario, mine, byId));
  }
  return rows;
}

function ratioRows(scenario, records, byId) {
  const of = (system) => records.filter((r) => byId.get(r.systemId).system === system);
  const mrezhen = of("mrezhen");
  if (mrezhen.length === 0) return [];
  const rows = [];
  for (const versus of PEER_SYSTEMS) {
    const peer = of(versus);
    const cycles = mrezhen
      .map((m) => [m, peer.find((p) => p.cycle === m.cycle)])
      .filter(([, p]) => p !== undefined);
    if (cycles.length === 0) continue;
    const row = { kind: "ratio", scenario, system: "mrezhen", versus, cycles: cycles.length };
    for (const metric of METRICS) {
      const s = spread(cycles.map(([m, p]) => m[metric] / p[metric]));
      if (s !== null) row[metric] = s;
    }
    rows.push(row);
  }
  return rows;
}

const fixed = (digits) => (v) =>
  typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–";
const thousands = (v) =>
  typeof v === "number" && Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "–";
const ratio = (s) =>
  s === undefined ? "–" : `${s.median.toFixed(2)} [${s.min.toFixed(2)}–${s.max.toFixed(2)}]`;

function table(headers, lines) {
  const widths = headers.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const format = (cells) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [format(headers), format(widths.map((w) => "-".repeat(w))), ...lines.map(format)].join(
    "\n",
  );
}

/** Goals of the groups scenario (bench/README.md), met or missed, from this run's rows. */
export const GROUP_GOALS = { throughputRatio: 1.5, ackP99Ms: 50, slowlogMs: 5 };

function groupGoals(rows) {
  const lines = [];
  const verdict = (ok) => (ok ? "met" : "MISSED");
  for (const r of rows) {
    if (r.kind !== "ratio" || r.versus !== "socket.io" || !/^groups-\d+$/.test(r.scenario))
      continue;
    if (r.msgsPerSec === undefined) continue;
    const goal = GROUP_GOALS.throughputRatio;
    lines.push(
      `  ${r.scenario}: delivered frames/s Mrezhen ÷ Socket.IO ${ratio(r.msgsPerSec)}, goal ≥ ${goal}: ${verdict(r.msgsPerSec.median >= goal)}`,
    );
  }
  for (const r of rows) {
    if (r.kind !== "result" || r.system !== "mrezhen" || !/^groups-\d+-at-/.test(r.scenario))
      continue;
    lines.push(
      `  ${r.scenario}: sender ack p99 ${fixed(1)(r.p99Ms)} ms (median of slices; worst ${fixed(1)(r.p99MsMax)}), goal ≤ ${GROUP_GOALS.ackP99Ms} ms: ${verdict(r.p99Ms <= GROUP_GOALS.ackP99Ms)}`,
    );
    if (r.slowlogMaxUs !== undefined) {
      const ms = r.slowlogMaxUs / 1000;
      lines.push(
        `  ${r.scenario}: longest Redis script (SLOWLOG) ${r.slowlogMaxUs > 0 ? `${ms.toFixed(2)} ms (${r.slowlogCommand})` : r.slowlogCommand}, goal ≤ ${GROUP_GOALS.slowlogMs} ms: ${verdict(ms <= GROUP_GOALS.slowlogMs)}; median logged script ${fixed(2)((r.slowlogMedianUs ?? 0) / 1000)} ms`,
        `  ${r.scenario}: ${r.slowlogOverBudget} of ${r.slowlogLogged} logged scripts over ${GROUP_GOALS.slowlogMs} ms; Redis preempted ${r.redisPreempted ?? "(unknown)"} times in those slices (SLOWLOG's wall clock counts the wait)`,
      );
    }
  }
  if (lines.length === 0) return [];
  return [
    "",
    "Groups (msgs/s = delivered frames/s; Mrezhen stores every message, Socket.IO none):",
    ...lines,
  ];
}

/** The human-readable report: absolute figures of this run, then the paired ratios. */
export function formatReport(rows, meta) {
  const results = rows.filter((r) => r.kind === "result");
  const ratios = rows.filter((r) => r.kind === "ratio");
  const out = [];
  out.push(
    `Absolute figures of this run (medians over slices; compare them only within this run):`,
    table(
      [
        "scenario",
        "system",
        "nodes",
        "msgs/s",
        "min",
        "max",
        "p50 ms",
        "p99 ms",
        "cpu µs/msg",
        "redis µs/msg",
        "RSS MiB",
        "KiB/idle",
        "srv cpu%",
        "core busy%",
        "lg cpu%",
        "errors",
      ],
      results.map((r) => [
        r.scenario,
        r.system,
        String(r.nodes),
        thousands(r.msgsPerSec),
        thousands(r.msgsPerSecMin),
        thousands(r.msgsPerSecMax),
        fixed(2)(r.p50Ms),
        fixed(2)(r.p99Ms),
        fixed(1)(r.cpuUsPerMsg),
        fixed(1)(r.redisCpuUsPerMsg),
        fixed(0)(r.rssMiB),
        fixed(1)(r.kibPerIdleConn),
        fixed(0)(r.serverCpuPct),
        fixed(0)(r.serverCoreBusyPct),
        fixed(0)(r.loadgenCpuPct),
        String(r.errors + r.lost + r.shed),
      ]),
    ),
    "",
    "connect rows: msgs/s is connects/s, cpu µs/msg is server CPU per connect+close, p50/p99 the time to open.",
    "idle rows: KiB/idle is server RSS growth per idle connection after a full GC, cpu µs/msg the",
    "  server CPU per connection opened (with what it sets off, e.g. presence broadcasts).",
    "srv cpu% is the system's servers' share of a core; core busy% is the server core's, all processes",
    "  included (the gap is what other processes took); lg cpu% is the load generator's (near 100: client-bound).",
    "errors counts error frames, failed connects, dropped connections, messages lost after the drain",
    "  and shed sends.",
    "",
    "Mrezhen ÷ peer, paired slice by slice within each cycle: median [min–max] over cycles",
    "(msgs/s above 1 means Mrezhen is faster; cpu, latency and KiB above 1 mean Mrezhen costs more):",
    table(
      ["scenario", "versus", "cycles", "msgs/s", "cpu µs/msg", "p50", "p99", "KiB/idle"],
      ratios.map((r) => [
        r.scenario,
        r.versus,
        String(r.cycles),
        ratio(r.msgsPerSec),
        ratio(r.cpuUsPerMsg),
        ratio(r.p50Ms),
        ratio(r.p99Ms),
        ratio(r.kibPerIdleConn),
      ]),
    ),
  );
  out.push(...groupGoals(rows));
  if (meta.failures.length > 0) {
    out.push(
      "",
      "Left out:",
      ...meta.failures.map((f) => `  ${f.scenario} ${f.systemId}: ${f.error}`),
    );
  }
  for (const r of results.filter((r) => r.lastError)) {
    out.push(`  last error seen, ${r.scenario} ${r.system}: ${r.lastError}`);
  }
  return out.join("\n");
}
