// The load generator: a child process of run.mjs (pinned to its own core), driven over IPC.
// It receives the plan (systems, scenarios, parameters), runs every scenario and sends back one
// record per slice. Interleaving is done here: within a scenario, every cycle gives each system
// one short slice, in an order rotated by one each cycle; cycle 0 only warms up and is dropped.
import { SignJWT } from "jose";
import { GROUP_GOALS } from "../report.mjs";
import { LatencyRecorder } from "../stats.mjs";
import {
  closeGroups,
  closePairs,
  connectSlice,
  fixedRateSlice,
  groupRateSlice,
  groupSaturationSlice,
  idleRun,
  openGroups,
  openPairs,
  saturationSlice,
  slowlogWatch,
  waitQuiet,
} from "./scenarios.mjs";

const progress = (text) => process.send?.({ type: "progress", text });

async function mintTokens(plan, prefix, count) {
  const key = new TextEncoder().encode(plan.secret);
  const tokens = [];
  for (let i = 0; i < count; i++) {
    tokens.push(
      await new SignJWT({})
        .setProtectedHeader({ alg: "HS256" })
        .setSubject(`${prefix}${i}`)
        .setIssuer(plan.issuer)
        .setIssuedAt()
        .setExpirationTime("6h")
        .sign(key),
    );
  }
  return tokens;
}

const rotate = (list, by) => list.map((_, i) => list[(i + by) % list.length]);

function describe(fig) {
  const num = (v, digits) => (typeof v === "number" ? v.toFixed(digits) : "–");
  const problems =
    fig.errors > 0 || fig.lost > 0 || fig.shed > 0
      ? ` errors=${fig.errors} lost=${fig.lost ?? 0} shed=${fig.shed ?? 0}`
      : "";
  const slowlog =
    fig.slowlogMaxUs === undefined
      ? ""
      : ` slowlog max=${num(fig.slowlogMaxUs / 1000, 2)}ms p50=${num(fig.slowlogMedianUs / 1000, 2)}ms` +
        ` over=${fig.slowlogOverBudget}/${fig.slowlogLogged} redis-preempted=${fig.redisPreempted ?? "?"}`;
  return (
    `${Math.round(fig.msgsPerSec).toLocaleString("en-US")}/s p99=${num(fig.p99Ms, 1)}ms ` +
    `cpu=${num(fig.cpuUsPerMsg, 1)}µs lg=${num(fig.loadgenCpuPct, 0)}%${slowlog}${problems}`
  );
}

/** Runs `slice(sys)` for every system over the cycles, interleaved; returns the measured slices. */
async function interleave(scenario, systems, cycles, slice) {
  const records = [];
  for (let cycle = 0; cycle <= cycles; cycle++) {
    for (const sys of rotate(systems, cycle)) {
      const fig = await slice(sys);
      progress(
        `${scenario} ${cycle === 0 ? "warm-up" : `cycle ${cycle}/${cycles}`} ${sys.id}: ${describe(fig)}`,
      );
      if (cycle > 0) records.push({ scenario, systemId: sys.id, cycle, ...fig });
    }
  }
  return records;
}

/** Opens the pairs of every system; a system whose setup fails is reported and left out. */
async function openAllPairs(scenario, systems, tokens, count, failures) {
  const ready = [];
  for (const sys of systems) {
    const started = performance.now();
    try {
      sys.pairs = await openPairs(sys, tokens, count);
      ready.push(sys);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      progress(`${scenario}: ${count} pairs open on ${sys.id} in ${seconds}s`);
    } catch (error) {
      failures.push({ scenario, systemId: sys.id, error: `setup: ${error.message}` });
      progress(
        `${scenario}: ${sys.id} left out, its ${count} pairs did not open: ${error.message}`,
      );
    }
  }
  const settled = [];
  for (const sys of ready) {
    // Let the connect storm (presence fan-out, Redis subscriptions) settle before measuring.
    await waitQuiet(sys.pids, 30_000);
    const dropped = sys.pairs.flatMap((p) => [p.sender, p.receiver]).filter((c) => c.dropped);
    if (dropped.length === 0) {
      settled.push(sys);
      continue;
    }
    const error = `setup: the server closed ${dropped.length} connections (${dropped[0].lastError})`;
    failures.push({ scenario, systemId: sys.id, error });
    progress(`${scenario}: ${sys.id} left out, ${error}`);
    await closePairs(sys.pairs);
  }
  return settled;
}

/** Opens `count` groups of `size` on every system; a system whose setup fails is left out. */
async function openAllGroups(plan, scenario, systems, count, size, failures) {
  const users = Array.from({ length: count * size }, (_, i) => `g${size}-${i}`);
  const tokens = await mintTokens(plan, `g${size}-`, count * size);
  const ready = [];
  for (const sys of systems) {
    const started = performance.now();
    try {
      sys.groups = await openGroups(sys, tokens, users, count, size);
      ready.push(sys);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      progress(`${scenario}: ${count} groups of ${size} open on ${sys.id} in ${seconds}s`);
    } catch (error) {
      failures.push({ scenario, systemId: sys.id, error: `setup: ${error.message}` });
      progress(`${scenario}: ${sys.id} left out, its groups did not open: ${error.message}`);
    }
  }
  for (const sys of ready) await waitQuiet(sys.pids, 30_000);
  return ready;
}

async function run(plan) {
  const p = plan.params;
  const latency = new LatencyRecorder();
  const single = plan.systems.filter((s) => s.topology === "single");
  const cluster = plan.systems.filter((s) => s.topology === "cluster");
  const wanted = (name) => plan.scenarios.includes(name);
  const records = [];
  const failures = [];

  const pairTokens = async () => ({
    senders: await mintTokens(plan, "s", p.pairs),
    receivers: await mintTokens(plan, "r", p.pairs),
  });

  if (wanted("idle")) {
    const tokens = await mintTokens(plan, "i", p.idleConnections);
    for (const sys of single) {
      progress(`idle: ${p.idleConnections} connections to ${sys.id}`);
      const fig = await idleRun(sys, tokens, p);
      progress(
        `idle ${sys.id}: ${fig.connections} open in ${fig.connectSeconds.toFixed(1)}s, ` +
          `${fig.kibPerIdleConn?.toFixed(1)} KiB and ${fig.cpuUsPerMsg?.toFixed(0)} µs CPU each`,
      );
      records.push({ scenario: "idle", systemId: sys.id, cycle: 1, ...fig });
    }
  }

  if (wanted("connect")) {
    const tokens = await mintTokens(plan, "c", p.connectUsers);
    records.push(
      ...(await interleave("connect", single, p.cycles, (sys) =>
        connectSlice(sys, tokens, p, latency),
      )),
    );
    for (const sys of single) await waitQuiet(sys.pids, 10_000);
  }

  if (wanted("single-node") || wanted("latency") || wanted("fixed")) {
    const ready = await openAllPairs("single-node", single, await pairTokens(), p.pairs, failures);
    if (wanted("single-node")) {
      records.push(
        ...(await interleave("single-node", ready, p.cycles, (sys) =>
          saturationSlice(sys, sys.pairs, p, latency),
        )),
      );
    }
    if (wanted("latency")) {
      records.push(
        ...(await interleave("latency", ready, p.cycles, (sys) =>
          fixedRateSlice(sys, sys.pairs, p, latency),
        )),
      );
    }
    if (wanted("fixed")) {
      for (const rate of p.rates) {
        records.push(
          ...(await interleave(`fixed-${rate}`, ready, p.cycles, (sys) =>
            fixedRateSlice(sys, sys.pairs, { ...p, rate }, latency),
          )),
        );
      }
    }
    for (const sys of ready) await closePairs(sys.pairs);
    // Closing sets off work too (presence): it must not overlap the cluster slices on the same core.
    for (const sys of ready) await waitQuiet(sys.pids, 30_000);
  }

  if ((wanted("cluster") || wanted("cluster-fixed")) && cluster.length > 0) {
    const ready = await openAllPairs("cluster", cluster, await pairTokens(), p.pairs, failures);
    if (wanted("cluster")) {
      records.push(
        ...(await interleave("cluster", ready, p.cycles, (sys) =>
          saturationSlice(sys, sys.pairs, p, latency),
        )),
      );
    }
    if (wanted("cluster-fixed")) {
      records.push(
        ...(await interleave(`cluster-fixed-${p.clusterRate}`, ready, p.cycles, (sys) =>
          fixedRateSlice(sys, sys.pairs, { ...p, rate: p.clusterRate }, latency),
        )),
      );
    }
    for (const sys of ready) await closePairs(sys.pairs);
  }

  if (wanted("groups") && cluster.length > 0) {
    for (const size of p.groupSizes) {
      const count = Math.max(1, Math.floor(p.groupUsers / size));
      const ready = await openAllGroups(plan, `groups-${size}`, cluster, count, size, failures);
      records.push(
        ...(await interleave(`groups-${size}`, ready, p.cycles, (sys) =>
          groupSaturationSlice(sys, sys.groups, p, latency),
        )),
      );
      for (const sys of ready) await closeGroups(sys.groups);
      for (const sys of ready) await waitQuiet(sys.pids, 30_000);
    }
    const scenario = `groups-${p.largeGroup}-at-${p.groupRate}`;
    const ready = await openAllGroups(plan, scenario, cluster, 1, p.largeGroup, failures);
    records.push(
      ...(await interleave(scenario, ready, p.cycles, (sys) =>
        groupRateSlice(
          sys,
          sys.groups[0],
          p,
          latency,
          sys.system === "mrezhen" && sys.engine === "redis"
            ? slowlogWatch(
                plan.redisUrl,
                plan.keyPrefix,
                p.slowlogThresholdUs,
                GROUP_GOALS.slowlogMs * 1000,
              )
            : undefined,
        ),
      )),
    );
    for (const sys of ready) await closeGroups(sys.groups);
  }

  return { records, failures };
}

process.once("message", async (plan) => {
  let reply;
  try {
    reply = { type: "result", ...(await run(plan)) };
  } catch (error) {
    reply = { type: "error", message: error.stack ?? String(error) };
  }
  process.send?.(reply, () => process.disconnect?.());
});

// Without the bench (its IPC channel gone) there is nothing left to do.
process.on("disconnect", () => process.exit(0));
