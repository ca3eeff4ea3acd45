import { describe, expect, it } from "vitest";
import { UpgradePacer } from "../../src/http/upgrade-pacing.js";

/** Keeps this thread busy for `ms`, as an upgrade's work does. */
function work(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // busy
  }
}

/**
 * `count` upgrades arriving in one turn, each `costMs` of work once admitted; resolves with the
 * order in which they did their work and how many had when a timer set at their arrival fired
 * (that timer runs in the next turn of the event loop).
 */
async function burst(pacer: UpgradePacer, count: number, costMs: number) {
  const order: number[] = [];
  const waits: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    const turn = pacer.admit();
    if (turn === "full") throw new Error("full");
    const upgrade = async () => {
      if (turn !== "now") await turn;
      work(costMs);
      order.push(i);
    };
    waits.push(upgrade());
  }
  const doneAtNextTurn = new Promise<number>((resolve) => setTimeout(() => resolve(order.length)));
  await Promise.all(waits);
  return { order, doneAtNextTurn: await doneAtNextTurn };
}

describe("UpgradePacer", () => {
  it("lets a turn's upgrades go on until the budget is spent, then works through the rest in order over later turns", async () => {
    const pacer = new UpgradePacer(3, 1000);
    const { order, doneAtNextTurn } = await burst(pacer, 20, 1);
    expect(order).toEqual(Array.from({ length: 20 }, (_, i) => i));
    // Each turn did about 3 ms' worth, and the node's other work (a timer here) ran between
    // turns: unpaced, all 20 would have been done before the timer.
    expect(doneAtNextTurn).toBeGreaterThanOrEqual(1);
    expect(doneAtNextTurn).toBeLessThan(20);
    expect(pacer.waitingCount).toBe(0);
  });

  it("works through at least one upgrade a turn, however long each takes", async () => {
    const pacer = new UpgradePacer(1, 1000);
    const { order } = await burst(pacer, 5, 3);
    expect(order).toEqual([0, 1, 2, 3, 4]);
  });

  it("does not pace at all with a budget of 0", async () => {
    const pacer = new UpgradePacer(0, 1000);
    for (let i = 0; i < 50; i++) {
      expect(pacer.admit()).toBe("now");
      work(0.2);
    }
  });

  it("gives a new turn a new budget", async () => {
    const pacer = new UpgradePacer(2, 1000);
    expect(pacer.admit()).toBe("now");
    work(3);
    const turn = pacer.admit();
    expect(turn).toBeInstanceOf(Promise);
    await turn;
    await new Promise((resolve) => setImmediate(resolve)); // after the end of that turn
    expect(pacer.waitingCount).toBe(0);
    expect(pacer.admit()).toBe("now");
  });

  it("says full past maxWaiting, and lets every waiting upgrade go on when stopped", async () => {
    const pacer = new UpgradePacer(1, 3);
    expect(pacer.admit()).toBe("now");
    work(2);
    const waiting = [pacer.admit(), pacer.admit(), pacer.admit()];
    for (const turn of waiting) expect(turn).toBeInstanceOf(Promise);
    expect(pacer.admit()).toBe("full");
    pacer.stop();
    expect(pacer.waitingCount).toBe(0);
    await Promise.all(waiting);
    expect(pacer.admit()).toBe("now");
  });
});
