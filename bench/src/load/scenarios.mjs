// The measurements the load generator makes against one system. Each slice drives load for a
// warm-up, then measures over a window (server CPU from /proc, delivered messages, latency), then
// stops the load and drains what is in flight, so the next system's slice starts on a quiet core.
import { readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import WebSocket from "ws";
import { cpusBusyUs, totalCpuUs, totalRssKiB } from "../proc.mjs";
import { rawConnect } from "./raw-connect.mjs";
import { createClient } from "./wire.mjs";

const CONNECT_TIMEOUT_MS = 30_000;
/** Connects in flight while opening the pairs: gentle enough not to make a burst the measurement. */
const SETUP_CONCURRENCY = 50;
const noop = () => {};

/** Microseconds since the load generator started; the clock stamped into message contents. */
export const nowUs = () => Math.round(performance.now() * 1000);

/**
 * Runs `fn` over `items` with at most `concurrency` at once, starting no new one once `until()` is
 * false or one has failed. Settles only when none is running any more, so that a caller cleaning up
 * after a failure does not race calls still in flight; then rethrows the first failure.
 */
export async function pool(items, concurrency, fn, until = () => true) {
  let next = 0;
  let failure;
  const worker = async () => {
    while (failure === undefined && next < items.length && until()) {
      try {
        await fn(items[next++]);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  if (failure !== undefined) throw failure.error;
}

/** Closes clients, giving the close handshakes a bounded time before cutting the rest. */
export async function closeAll(clients) {
  await Promise.race([Promise.all(clients.map((c) => c.close())), sleep(10_000)]);
  for (const c of clients) c.ws?.terminate();
}

/** Waits (bounded) until the processes use less than `pct` % of a core, e.g. after a connect storm. */
export async function waitQuiet(pids, maxMs, pct = 5) {
  const end = performance.now() + maxMs;
  let cpu = totalCpuUs(pids);
  let at = performance.now();
  while (performance.now() < end) {
    await sleep(500);
    const cpuNow = totalCpuUs(pids);
    const atNow = performance.now();
    if (((cpuNow - cpu) / ((atNow - at) * 1000)) * 100 < pct) return;
    cpu = cpuNow;
    at = atNow;
  }
}

/**
 * Opens `count` sender→receiver pairs on a system: receivers on its first node, senders on its
 * last (the same node for one-node systems, the other node for clusters). Receivers connect first,
 * so no message ever finds its recipient offline.
 */
export async function openPairs(sys, tokens, count) {
  const senderUrl = sys.nodes[sys.nodes.length - 1].url;
  const pairs = Array.from({ length: count }, (_, i) => ({
    i,
    to: `r${i}`,
    sender: createClient(sys.protocol, senderUrl),
    receiver: createClient(sys.protocol, sys.nodes[0].url),
  }));
  let opened = 0;
  const open = (client, token) => client.open(token, CONNECT_TIMEOUT_MS).then(() => opened++);
  try {
    await pool(pairs, SETUP_CONCURRENCY, (p) => open(p.receiver, tokens.receivers[p.i]));
    await pool(pairs, SETUP_CONCURRENCY, (p) => open(p.sender, tokens.senders[p.i]));
  } catch (error) {
    await closePairs(pairs);
    throw new Error(`${error.message} after ${opened} of ${2 * count} connections`);
  }
  return pairs;
}

export function closePairs(pairs) {
  return closeAll(pairs.flatMap((p) => [p.sender, p.receiver]));
}

function errorCount(pairs) {
  let n = 0;
  for (const p of pairs) n += p.sender.errors + p.receiver.errors;
  return n;
}

function lastError(pairs) {
  for (const p of pairs) {
    for (const client of [p.sender, p.receiver])
      if (client.lastError !== "") return client.lastError;
  }
  return undefined;
}

/**
 * A measuring window over a system's server processes, the Redis server its nodes share (when
 * there is one: Redis is not pinned and serves every cluster, so it is reported apart), the
 * server core(s) as a whole (what the servers did not use of it, other processes took), and this
 * load generator.
 */
function openWindow(sys) {
  return {
    at: performance.now(),
    serverCpuUs: totalCpuUs(sys.pids),
    redisCpuUs: sys.redisPid === undefined ? 0 : totalCpuUs([sys.redisPid]),
    coreBusyUs: sys.serverCpus === undefined ? 0 : cpusBusyUs(sys.serverCpus),
    self: process.cpuUsage(),
  };
}

function closeWindow(sys, window) {
  const us = (performance.now() - window.at) * 1000;
  const serverCpuUs = totalCpuUs(sys.pids) - window.serverCpuUs;
  const self = process.cpuUsage(window.self);
  return {
    seconds: us / 1e6,
    serverCpuUs,
    redisCpuUs:
      sys.redisPid === undefined ? undefined : totalCpuUs([sys.redisPid]) - window.redisCpuUs,
    serverCpuPct: (serverCpuUs / us) * 100,
    serverCoreBusyPct:
      sys.serverCpus === undefined
        ? undefined
        : ((cpusBusyUs(sys.serverCpus) - window.coreBusyUs) / (us * sys.serverCpus.length)) * 100,
    loadgenCpuPct: ((self.user + self.system) / us) * 100,
    rssMiB: totalRssKiB(sys.pids) / 1024,
  };
}

/**
 * Lets the load warm up for warmMs, then measures one window of measureMs; `count(true)` and
 * `count(false)` tell the slice's loop when what it sees belongs to the window.
 */
async function measuredWindow(sys, p, count) {
  await sleep(p.warmMs);
  const window = openWindow(sys);
  count(true);
  await sleep(p.measureMs);
  count(false);
  return closeWindow(sys, window);
}

/** Waits (bounded) until nothing is outstanding; returns what still is. */
async function drain(outstanding, maxMs) {
  const end = performance.now() + maxMs;
  while (outstanding() > 0 && performance.now() < end) await sleep(10);
  return Math.max(0, outstanding());
}

/** Message counters of one slice; `outstanding` is what is still unanswered or undelivered. */
function counters() {
  return {
    sent: 0,
    answered: 0,
    refused: 0,
    delivered: 0,
    outstanding() {
      return this.sent - this.answered + (this.sent - this.refused - this.delivered);
    },
  };
}

function detach(pairs) {
  for (const p of pairs) {
    p.sender.onAck = noop;
    p.receiver.onDeliver = noop;
  }
}

function sliceFigures(m, delivered, latency, extra) {
  return {
    msgsPerSec: delivered / m.seconds,
    ...latency.percentilesMs(),
    cpuUsPerMsg: delivered > 0 ? m.serverCpuUs / delivered : null,
    redisCpuUsPerMsg:
      m.redisCpuUs !== undefined && delivered > 0 ? m.redisCpuUs / delivered : undefined,
    rssMiB: m.rssMiB,
    serverCpuPct: m.serverCpuPct,
    serverCoreBusyPct: m.serverCoreBusyPct,
    loadgenCpuPct: m.loadgenCpuPct,
    ...extra,
  };
}

/**
 * Saturation, closed loop: every pair keeps `inflight` messages outstanding and sends the next one
 * as soon as one is acked. Messages/s and latency count deliveries inside the window.
 */
export async function saturationSlice(sys, pairs, p, latency) {
  const c = counters();
  let running = true;
  let inWindow = false;
  let windowDelivered = 0;
  const errorsBefore = errorCount(pairs);
  latency.reset();
  for (const pair of pairs) {
    const send = () => {
      c.sent++;
      pair.sender.send(pair.to, nowUs());
    };
    pair.sender.onAck = (ok) => {
      c.answered++;
      if (!ok) c.refused++;
      if (running) send();
    };
    pair.receiver.onDeliver = (stamp) => {
      c.delivered++;
      if (inWindow) {
        windowDelivered++;
        latency.add(nowUs() - stamp);
      }
    };
    for (let k = 0; k < p.inflight; k++) send();
  }
  const m = await measuredWindow(sys, p, (counting) => {
    inWindow = counting;
  });
  running = false;
  const lost = await drain(() => c.outstanding(), p.drainMs);
  detach(pairs);
  return sliceFigures(m, windowDelivered, latency, {
    errors: errorCount(pairs) - errorsBefore,
    lastError: lastError(pairs),
    lost,
  });
}

/**
 * How many messages of an open loop started at `startUs` are due by now: message i is scheduled
 * at startUs + i / rate, so i = 0 is due at once. (Counting floor(elapsed · rate) instead sent
 * each message one interval after the time it was stamped with, adding 1 / rate to every
 * latency: 100 ms at 10 msgs/s, 0.5 ms at 2,000.)
 */
function dueCount(startUs, rate) {
  return Math.floor(((nowUs() - startUs) * rate) / 1e6) + 1;
}

/**
 * Fixed rate, open loop: `rate` messages/s round-robin over the pairs, whatever the acks. Each
 * message is stamped with its scheduled time, not the time the timer got to it, so a stalled
 * server or load generator shows in the latency (no coordinated omission). When more than
 * `maxOutstanding` messages are undelivered the system has fallen behind: further messages are
 * not sent but counted as `shed`.
 */
export async function fixedRateSlice(sys, pairs, p, latency) {
  const c = counters();
  let windowStartUs = Number.POSITIVE_INFINITY;
  let windowEndUs = Number.POSITIVE_INFINITY;
  let shed = 0;
  const errorsBefore = errorCount(pairs);
  latency.reset();
  for (const pair of pairs) {
    pair.sender.onAck = (ok) => {
      c.answered++;
      if (!ok) c.refused++;
    };
    pair.receiver.onDeliver = (stamp) => {
      c.delivered++;
      // Latency of the messages scheduled inside the window, including those delivered after it.
      if (stamp >= windowStartUs && stamp < windowEndUs) latency.add(nowUs() - stamp);
    };
  }
  const startUs = nowUs();
  let scheduled = 0;
  let next = 0;
  const timer = setInterval(() => {
    for (const due = dueCount(startUs, p.rate); scheduled < due; scheduled++) {
      if (c.sent - c.refused - c.delivered >= p.maxOutstanding) {
        shed++;
        continue;
      }
      const pair = pairs[next];
      next = (next + 1) % pairs.length;
      c.sent++;
      pair.sender.send(pair.to, startUs + Math.round((scheduled * 1e6) / p.rate));
    }
  }, 1);
  await sleep(p.warmMs);
  const window = openWindow(sys);
  windowStartUs = nowUs();
  const deliveredBefore = c.delivered;
  await sleep(p.measureMs);
  windowEndUs = nowUs();
  const m = closeWindow(sys, window);
  const windowDelivered = c.delivered - deliveredBefore;
  clearInterval(timer);
  const lost = await drain(() => c.outstanding(), p.drainMs);
  detach(pairs);
  return sliceFigures(m, windowDelivered, latency, {
    errors: errorCount(pairs) - errorsBefore,
    lastError: lastError(pairs),
    lost,
    shed,
  });
}

/**
 * Connect rate: `concurrency` loops each open an authenticated connection (a fresh JWT check on
 * every one) with the bare-socket client of raw-connect.mjs, then close it, and start over. Counts opens in the window; the server CPU covers
 * the whole open+close cycle; latency is the time to open (upgrade, or Socket.IO CONNECT ack).
 */
export async function connectSlice(sys, tokens, p, latency) {
  let running = true;
  let inWindow = false;
  let opened = 0;
  let failed = 0;
  let failure;
  let next = 0;
  latency.reset();
  const loop = async () => {
    while (running) {
      const token = tokens[next++ % tokens.length];
      const at = nowUs();
      try {
        const connection = await rawConnect(
          sys.protocol,
          sys.nodes[0].url,
          token,
          CONNECT_TIMEOUT_MS,
        );
        if (inWindow) {
          opened++;
          latency.add(nowUs() - at);
        }
        await connection.close();
      } catch (error) {
        failed++;
        failure = error.message;
      }
    }
  };
  const loops = Promise.all(Array.from({ length: p.connectConcurrency }, loop));
  const m = await measuredWindow(sys, p, (counting) => {
    inWindow = counting;
  });
  running = false;
  await Promise.race([loops, sleep(p.drainMs)]);
  return sliceFigures(m, opened, latency, { errors: failed, lastError: failure });
}

/** Full GC in the server processes (see server-hook.mjs), then a pause for it to finish. */
async function collectGarbage(pids) {
  for (let round = 0; round < 2; round++) {
    for (const pid of pids) process.kill(pid, "SIGUSR2");
    await sleep(300);
  }
}

/**
 * Idle connections: RSS of the server after a full GC, before and after opening `tokens.length`
 * authenticated connections of distinct users that then stay idle (Socket.IO's pings answered).
 * Connecting stops at `idleConnectMs`: the figures are then for the connections that opened.
 */
export async function idleRun(sys, tokens, p) {
  await collectGarbage(sys.pids);
  const before = totalRssKiB(sys.pids);
  const cpuBefore = totalCpuUs(sys.pids);
  const clients = tokens.map(() => createClient(sys.protocol, sys.nodes[0].url));
  const startedAt = performance.now();
  const deadline = startedAt + p.idleConnectMs;
  let opened = 0;
  let failed = 0;
  let failure;
  await pool(
    clients.map((client, i) => ({ client, token: tokens[i] })),
    p.connectConcurrency,
    async ({ client, token }) => {
      try {
        await client.open(token, CONNECT_TIMEOUT_MS);
        opened++;
      } catch (error) {
        failed++;
        failure = error.message;
      }
    },
    () => performance.now() < deadline,
  );
  const connectSeconds = (performance.now() - startedAt) / 1000;
  // Let the server finish what the connects set off (presence fan-out) before measuring.
  await waitQuiet(sys.pids, 30_000);
  const connectCpuUs = totalCpuUs(sys.pids) - cpuBefore;
  await collectGarbage(sys.pids);
  const after = totalRssKiB(sys.pids);
  await closeAll(clients);
  await waitQuiet(sys.pids, 30_000);
  return {
    connections: opened,
    errors: failed,
    lastError: failure,
    connectSeconds,
    rssBeforeMiB: before / 1024,
    rssMiB: after / 1024,
    kibPerIdleConn: opened > 0 ? (after - before) / opened : null,
    // Server CPU per connection opened, including whatever each connect sets off (presence).
    cpuUsPerMsg: opened > 0 ? connectCpuUs / opened : null,
  };
}

// ---- Groups --------------------------------------------------------------------------------

/**
 * Creates a Mrezhen group over a setup connection of its sender (the creator, so a member with
 * nothing extra: no offline admin whose queue every message would also fill); resolves its id.
 */
async function createMrezhenGroup(url, token, name, members) {
  const ws = new WebSocket(`${url}/ws?token=${token}&presence=off`);
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error("create_group: no answer")),
        CONNECT_TIMEOUT_MS,
      );
      ws.on("error", reject);
      ws.on("message", (data) => {
        const frame = JSON.parse(data.toString());
        if (frame.type === "group") {
          clearTimeout(timer);
          resolve(frame.group.groupId);
        } else if (frame.type === "error") {
          clearTimeout(timer);
          reject(new Error(`create_group: ${frame.code} ${frame.message}`));
        }
      });
      ws.once("open", () =>
        ws.send(JSON.stringify({ type: "create_group", name, members: members.slice(1) })),
      );
    });
  } finally {
    ws.terminate();
  }
}

/**
 * Opens `count` groups of `size` members on a system, members alternating between its nodes
 * (so most deliveries cross nodes, as in a real deployment): member 0 of each is its sender.
 * Users are `<prefix>i` (tokens[i]); group g holds users g·size … g·size + size − 1. Mrezhen's
 * groups are created (stored) once the members are connected; Socket.IO's are rooms joined.
 */
export async function openGroups(sys, tokens, users, count, size) {
  const groups = [];
  const all = [];
  try {
    for (let g = 0; g < count; g++) {
      const members = Array.from({ length: size }, (_, k) => {
        const i = g * size + k;
        const url = sys.nodes[k % sys.nodes.length].url;
        const client = createClient(sys.protocol, url);
        all.push(client);
        return { client, token: tokens[i], userId: users[i], url };
      });
      groups.push({ members, sender: members[0].client, fanOut: size - 1 });
    }
    await pool(
      all.map((client, i) => ({ client, i })),
      SETUP_CONCURRENCY,
      ({ client, i }) => client.open(tokens[i], CONNECT_TIMEOUT_MS),
    );
    for (const [g, group] of groups.entries()) {
      if (sys.protocol === "socket.io") {
        group.groupId = `room-${size}-${g}`;
        await pool(group.members, SETUP_CONCURRENCY, (m) => m.client.joinGroup(group.groupId));
      } else {
        const creator = group.members[0];
        group.groupId = await createMrezhenGroup(
          creator.url,
          creator.token,
          `bench ${size}`,
          group.members.map((m) => m.userId),
        );
      }
    }
  } catch (error) {
    await closeAll(all);
    throw error;
  }
  return groups;
}

export function closeGroups(groups) {
  return closeAll(groups.flatMap((g) => g.members.map((m) => m.client)));
}

/**
 * Ends a slice's handlers. A sender's acks the drain did not wait for (it ran out: counted lost)
 * arrive in the next slice, before that slice's own (a connection's acks come in send order):
 * `staleAcks` makes the next slice skip them, and deliveries stamped before a slice started are
 * skipped too, so one slow slice does not spill into the next one's figures.
 */
function detachGroups(groups) {
  for (const group of groups) {
    // Until the next slice, late acks only count down what is still unanswered.
    group.sender.onAck = () => {
      if (group.unanswered > 0) group.unanswered--;
    };
    for (const m of group.members) m.client.onDeliver = noop;
  }
}

/** At a slice's start: the acks of earlier slices still to come are skipped (see stale). */
function attachGroup(group) {
  group.staleAcks = group.unanswered ?? 0;
  group.unanswered = 0;
}

/** Whether an ack belongs to an earlier slice of the group (see detachGroups); counts it off. */
function stale(group) {
  if (group.staleAcks === 0) return false;
  group.staleAcks--;
  return true;
}

function groupErrors(groups) {
  let n = 0;
  for (const g of groups) for (const m of g.members) n += m.client.errors;
  return n;
}

function groupLastError(groups) {
  for (const g of groups)
    for (const m of g.members) if (m.client.lastError !== "") return m.client.lastError;
  return undefined;
}

/** Counters of a group slice: every message is delivered once to each member but its sender. */
function groupCounters() {
  return {
    sent: 0,
    answered: 0,
    expected: 0,
    delivered: 0,
    // Acks and deliveries apart: a surplus of one must not hide a shortfall of the other.
    outstanding() {
      return Math.max(0, this.sent - this.answered) + Math.max(0, this.expected - this.delivered);
    },
  };
}

/** What a group slice still missed after its drain, for the report. */
function lostText(c, lost) {
  if (lost === 0) return undefined;
  return `after the drain: ${c.sent - c.answered} of ${c.sent} sends unanswered, ${c.expected - c.delivered} of ${c.expected} deliveries missing`;
}

/**
 * Groups at saturation, closed loop: each group's sender keeps `inflight` messages outstanding
 * and sends the next as soon as one is acked. msgs/s counts delivered frames (a message to a
 * group of n is n − 1 of them) inside the window; latency is send → delivery.
 */
export async function groupSaturationSlice(sys, groups, p, latency) {
  const c = groupCounters();
  let running = true;
  let inWindow = false;
  let windowDelivered = 0;
  const errorsBefore = groupErrors(groups);
  const startUs = nowUs();
  latency.reset();
  for (const group of groups) {
    attachGroup(group);
    const send = () => {
      c.sent++;
      group.unanswered++;
      group.sender.sendGroup(group.groupId, nowUs());
    };
    group.sender.onAck = (ok) => {
      if (stale(group)) return;
      c.answered++;
      group.unanswered--;
      if (ok) c.expected += group.fanOut;
      if (running) send();
    };
    for (const m of group.members) {
      m.client.onDeliver = (stamp) => {
        if (stamp < startUs) return; // sent in a previous slice
        c.delivered++;
        if (inWindow) {
          windowDelivered++;
          latency.add(nowUs() - stamp);
        }
      };
    }
    for (let k = 0; k < p.inflight; k++) send();
  }
  const m = await measuredWindow(sys, p, (counting) => {
    inWindow = counting;
  });
  running = false;
  const lost = await drain(() => c.outstanding(), p.drainMs);
  detachGroups(groups);
  return sliceFigures(m, windowDelivered, latency, {
    errors: groupErrors(groups) - errorsBefore,
    lastError: groupLastError(groups) ?? lostText(c, lost),
    lost,
  });
}

/** A process's involuntary context switches so far, or undefined where /proc does not say. */
function preemptions(pid) {
  if (pid === undefined) return undefined;
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const count = /nonvoluntary_ctxt_switches:\s*(\d+)/.exec(status)?.[1];
    return count === undefined ? undefined : Number(count);
  } catch {
    return undefined; // not this machine's process, or gone
  }
}

/**
 * Reads SLOWLOG around a slice: `start` lowers the threshold to `thresholdUs` (and lengthens the
 * log, the Redis is shared) and resets it; `finish` restores both and returns the longest entry
 * whose arguments name this run's keys (`prefix`): Mrezhen's scripts get their keys as
 * arguments, so other users of the same Redis are left out. With it: the median, how many
 * logged scripts were over `budgetUs`, and how often the kernel preempted Redis in the slice
 * (its involuntary context switches, from /proc: the Redis is on loopback). SLOWLOG times a
 * command by the wall clock, so a script preempted half-way counts the time another process
 * ran; on this 2-core machine Redis shares the cores with the nodes and the load generator.
 */
export function slowlogWatch(redisUrl, prefix, thresholdUs, budgetUs) {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1, connectTimeout: 2000 });
  let saved;
  let redisPid;
  let preemptedBefore;
  return {
    async start() {
      redisPid = /process_id:(\d+)/.exec(await redis.info("server"))?.[1];
      preemptedBefore = preemptions(redisPid);
      const [, slower] = await redis.config("GET", "slowlog-log-slower-than");
      const [, length] = await redis.config("GET", "slowlog-max-len");
      saved = { slower, length };
      await redis.config("SET", "slowlog-log-slower-than", String(thresholdUs));
      await redis.config("SET", "slowlog-max-len", "10000");
      await redis.slowlog("RESET");
    },
    async finish() {
      try {
        const entries = await redis.slowlog("GET", 10_000);
        const preemptedAfter = preemptions(redisPid);
        let longest = { us: 0, command: `none over ${thresholdUs} µs` };
        const durations = [];
        for (const [, , us, args] of entries) {
          // Scripts only: Redis 7 also logs the commands a script calls, each on its own.
          if (!/^eval/i.test(String(args[0]))) continue;
          if (!args.some((arg) => String(arg).includes(prefix))) continue;
          durations.push(us);
          if (us > longest.us) longest = { us, command: args.slice(0, 2).join(" ") };
        }
        durations.sort((a, b) => a - b);
        return {
          ...longest,
          medianUs: durations[durations.length >> 1] ?? 0,
          logged: durations.length,
          overBudget: durations.filter((us) => us > budgetUs).length,
          preempted:
            preemptedBefore === undefined || preemptedAfter === undefined
              ? undefined
              : preemptedAfter - preemptedBefore,
        };
      } finally {
        if (saved !== undefined) {
          await redis.config("SET", "slowlog-log-slower-than", saved.slower);
          await redis.config("SET", "slowlog-max-len", saved.length);
        }
        redis.disconnect();
      }
    },
  };
}

/**
 * One large group at a fixed rate, open loop: `rate` messages/s from its sender. The latency is
 * the sender's ack (send → message_ack: for Mrezhen, stored in the log and every member's inbox
 * and published), from a FIFO of send times (a connection's acks come in send order). msgs/s is
 * delivered frames, as in groupSaturationSlice. With `slowlog`, the longest Redis script of the
 * slice is read from SLOWLOG (see slowlogWatch).
 */
export async function groupRateSlice(sys, group, p, latency, slowlog) {
  const c = groupCounters();
  const sentAt = [];
  let inWindow = false;
  let windowDelivered = 0;
  const errorsBefore = groupErrors([group]);
  latency.reset();
  attachGroup(group);
  group.sender.onAck = (ok) => {
    if (stale(group)) return;
    const at = sentAt.shift();
    c.answered++;
    group.unanswered--;
    if (ok) c.expected += group.fanOut;
    if (at.measured) latency.add(nowUs() - at.us);
  };
  await slowlog?.start();
  const startUs = nowUs();
  for (const m of group.members) {
    m.client.onDeliver = (stamp) => {
      if (stamp < startUs) return; // sent in a previous slice
      c.delivered++;
      if (inWindow) windowDelivered++;
    };
  }
  let scheduled = 0;
  const timer = setInterval(() => {
    for (const due = dueCount(startUs, p.groupRate); scheduled < due; scheduled++) {
      // Stamped with its scheduled time: a stalled server shows in the latency.
      const us = startUs + Math.round((scheduled * 1e6) / p.groupRate);
      sentAt.push({ us, measured: inWindow });
      c.sent++;
      group.unanswered++;
      group.sender.sendGroup(group.groupId, us);
    }
  }, 1); // as fixedRateSlice's: a send is at most about a millisecond late by the timer
  await sleep(p.warmMs);
  const window = openWindow(sys);
  inWindow = true;
  await sleep(p.groupMeasureMs);
  inWindow = false;
  const m = closeWindow(sys, window);
  clearInterval(timer);
  const lost = await drain(() => c.outstanding(), p.drainMs);
  const longest = await slowlog?.finish();
  detachGroups([group]);
  return sliceFigures(m, windowDelivered, latency, {
    errors: groupErrors([group]) - errorsBefore,
    lastError: groupLastError([group]) ?? lostText(c, lost),
    lost,
    ...(longest === undefined
      ? {}
      : {
          slowlogMaxUs: longest.us,
          slowlogMedianUs: longest.medianUs,
          slowlogCommand: longest.command,
          slowlogLogged: longest.logged,
          slowlogOverBudget: longest.overBudget,
          redisPreempted: longest.preempted,
        }),
  });
}
