// Process figures read from /proc (Linux): CPU time and resident memory of the server processes.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Clock ticks per second, the unit of utime/stime in /proc/<pid>/stat (100 almost everywhere). */
const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU time of a whole process (all its threads), in microseconds. */
export function cpuUs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 of the file, 12th and 13th after the name.
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1e6) / CLK_TCK;
}

/** Resident set size of a process, in KiB (VmRSS of /proc/<pid>/status). */
export function rssKiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = status.match(/^VmRSS:\s+(\d+) kB$/m);
  if (match === null) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]);
}

/** Summed CPU time of several processes (the nodes of one system), in microseconds. */
export function totalCpuUs(pids) {
  let sum = 0;
  for (const pid of pids) sum += cpuUs(pid);
  return sum;
}

/** Summed RSS of several processes, in KiB. */
export function totalRssKiB(pids) {
  let sum = 0;
  for (const pid of pids) sum += rssKiB(pid);
  return sum;
}

/** CPU numbers of a taskset-style list ("0", "0-1", "0,2-3"). */
export function parseCpuList(list) {
  return list.split(",").flatMap((part) => {
    const [from, to = from] = part.split("-").map(Number);
    return Array.from({ length: to - from + 1 }, (_, i) => from + i);
  });
}

/**
 * Busy time of some CPUs (all but idle and iowait, from /proc/stat), in microseconds: on a shared
 * machine, the part of it the servers did not use is what other processes took from them.
 */
export function cpusBusyUs(cpus) {
  const stat = readFileSync("/proc/stat", "utf8");
  let ticks = 0;
  for (const cpu of cpus) {
    const line = stat.match(new RegExp(`^cpu${cpu} (.*)$`, "m"))?.[1];
    if (line === undefined) continue;
    const [user, nice, system, , , irq, softirq, steal] = line.split(" ").map(Number);
    ticks += user + nice + system + irq + softirq + steal;
  }
  return (ticks * 1e6) / CLK_TCK;
}

/** The soft and hard limits on open files of this process. */
export function openFilesLimit() {
  const limits = readFileSync("/proc/self/limits", "utf8");
  const match = limits.match(/^Max open files\s+(\S+)\s+(\S+)/m);
  const parse = (v) => (v === "unlimited" ? Number.POSITIVE_INFINITY : Number(v));
  return match === null
    ? { soft: Number.POSITIVE_INFINITY, hard: Number.POSITIVE_INFINITY }
    : { soft: parse(match[1]), hard: parse(match[2]) };
}
