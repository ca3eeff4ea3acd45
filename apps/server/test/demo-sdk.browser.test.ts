import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { freePort, mintToken, redisForTests } from "@mrezhen/testkit";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { connectTo } from "./helpers.js";

/**
 * The demo page on the SDK, in a real Chromium, through what breaks links: a node restart while
 * a user types and sends, and a page reload with a message still in the outbox. Nodes are real
 * processes on Redis, restarted on the same port, as behind a fixed address.
 */
const CHROMIUM = "/usr/bin/chromium";
const haveChromium = existsSync(CHROMIUM);
const underCi = process.env["CI"] === "true";
const redis = haveChromium || underCi ? await redisForTests() : undefined;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe.skipIf((!haveChromium || !redis) && !underCi)("the demo page on the SDK", () => {
  let browser: Browser | undefined;
  let port = 0;
  let node: { child: ChildProcess; exited: Promise<unknown> } | undefined;

  const env = () => ({
    REDIS_URL: redis?.url ?? "",
    REDIS_KEY_PREFIX: redis?.prefix ?? "",
    WS_PORT: String(port),
    SHUTDOWN_TIMEOUT_MS: "2000",
  });
  const base = () => `http://127.0.0.1:${port}`;

  /**
   * Starts `node dist/main.js` on the test's fixed port, as helpers' spawnNode does on a fresh
   * one: a restarted node must come back at the address the pages know.
   */
  async function startOnPort(): Promise<void> {
    const main = fileURLToPath(new URL("../dist/main.js", import.meta.url));
    const child = spawn(process.execPath, [main], {
      env: { ...process.env, LOG_LEVEL: "warn", HOST: "127.0.0.1", ...env() },
      stdio: ["ignore", "ignore", "inherit"],
    });
    onTestFinished(() => void child.kill("SIGKILL"));
    node = { child, exited: new Promise((resolve) => child.on("exit", resolve)) };
    await until(async () => {
      try {
        return (await fetch(`${base()}/health`)).ok;
      } catch {
        return false;
      }
    }, "the node's health");
  }

  async function openAs(user: string): Promise<Page> {
    if (browser === undefined) throw new Error("no browser");
    const context = await browser.newContext();
    const page = await context.newPage();
    page.on("pageerror", (error) => {
      throw error;
    });
    await page.goto(`${base()}/`);
    await page.waitForFunction("window.mrezhenDemoReady === true");
    await page.getByLabel("Token (JWT)").fill(await mintToken({ sub: user }));
    await page.getByRole("button", { name: "Connect", exact: true }).click();
    await until(
      async () => ((await page.getByRole("status").textContent()) ?? "").includes("Connected"),
      `${user} connected`,
    );
    return page;
  }

  async function openThread(page: Page, peer: string): Promise<void> {
    await page.getByPlaceholder("user id").fill(peer);
    await page.getByRole("button", { name: "Open", exact: true }).click();
  }

  const bodies = (page: Page, direction: "in" | "out") =>
    page.locator(`#messages .msg.${direction} .body`).allTextContents();

  beforeAll(async () => {
    if (!haveChromium || !redis) throw new Error("Chromium and Redis are required under CI=true");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      timeout: 15_000,
      args: [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  });

  afterAll(async () => {
    await browser?.close();
    await redis?.close();
  });

  it("two users chat; the node restarts while one types and sends; both pages come back by themselves and every message arrives once", async () => {
    port = await freePort();
    await startOnPort();
    const alice = await openAs("page-alice");
    const bob = await openAs("page-bob");
    await openThread(alice, "page-bob");
    const composer = alice.getByLabel("Message", { exact: true });
    for (const text of ["one", "two", "three"]) {
      await composer.fill(text);
      await composer.press("Enter");
    }
    await until(
      async () => (await bodies(bob, "in")).length === 0,
      "nothing shown before bob opens",
    );
    await until(
      async () =>
        (await bob.locator("#convs button[data-peer='page-alice'] .unread").textContent()) === "3",
      "bob's unread count",
    );
    await openThread(bob, "page-alice");
    await until(async () => (await bodies(bob, "in")).join() === "one,two,three", "bob's thread");

    // The node restarts (SIGTERM: drain, 1012) while alice is typing and sending.
    await composer.pressSequentially("four", { delay: 20 });
    node?.child.kill("SIGTERM");
    await composer.press("Enter");
    await composer.pressSequentially("five", { delay: 20 });
    await composer.press("Enter");
    await node?.exited;
    // While it is down, the page shows what waits in the outbox.
    await until(
      async () => ((await alice.locator("#outbox-note").textContent()) ?? "").includes("outbox"),
      "the outbox note",
    );
    await composer.fill("six");
    await composer.press("Enter");
    await startOnPort();

    // No clicks: the pages reconnect by themselves and the outbox drains.
    for (const page of [alice, bob]) {
      await until(
        async () => ((await page.getByRole("status").textContent()) ?? "").includes("Connected"),
        "reconnected",
        30_000,
      );
    }
    await until(
      async () => (await bodies(bob, "in")).join() === "one,two,three,four,five,six",
      "every message once, in order, at bob",
      30_000,
    );
    expect(await bodies(alice, "out")).toEqual(["one", "two", "three", "four", "five", "six"]);
    await until(
      async () => (await alice.locator("#messages .msg.out[data-status='waiting']").count()) === 0,
      "no message left waiting",
    );
    // A late duplicate would show up now: give it a moment.
    await sleep(500);
    expect(await bodies(bob, "in")).toEqual(["one", "two", "three", "four", "five", "six"]);
    await alice.context().close();
    await bob.context().close();
  }, 90_000);

  it("three users chat in a group: one creates it with the other two, each sends, every page shows all three in order with ticks and the membership entry", async () => {
    port = await freePort();
    await startOnPort();
    const [alice, bob, carol] = [
      await openAs("grp-page-alice"),
      await openAs("grp-page-bob"),
      await openAs("grp-page-carol"),
    ] as [Page, Page, Page];
    await alice.getByPlaceholder("group name").fill("Trio");
    await alice.getByPlaceholder("members: bob, carol").fill("grp-page-bob, grp-page-carol");
    await alice.getByRole("button", { name: "Create group", exact: true }).click();
    // The creator's page opens the new group; the others see it in their lists at once.
    await until(
      async () =>
        ((await alice.locator("#thread-title").textContent()) ?? "") === "Messages in Trio",
      "alice's page opens the group",
    );
    const groupRow = (page: Page) => page.locator("#convs button[data-group]");
    for (const page of [bob, carol]) {
      await until(async () => (await groupRow(page).count()) === 1, "the group in the list");
      expect(await groupRow(page).locator(".peer").textContent()).toContain("Trio");
    }

    // Alice writes first: carol, who has not opened the group yet, sees an unread count.
    const send = async (page: Page, text: string) => {
      const composer = page.getByLabel("Message", { exact: true });
      await composer.fill(text);
      await composer.press("Enter");
      // The ack says delivered (the others are connected); a member with the group open may
      // have read it already, which ranks above.
      await until(
        async () =>
          ["delivered", "read"].includes(
            (await page.locator("#messages .msg.out").last().getAttribute("data-status")) ?? "",
          ),
        `${text} acked as delivered`,
      );
    };
    await send(alice, "hello from alice");
    // Nobody had the group open: the tick is the ack's.
    expect(await alice.locator("#messages .msg.out .badge").textContent()).toBe("✓✓ delivered");
    await until(
      async () => (await groupRow(carol).locator(".unread").textContent()) === "1",
      "carol's unread count",
    );
    await groupRow(bob).click();
    await until(
      async () => (await bodies(bob, "in")).join() === "hello from alice",
      "bob's thread shows alice's message",
    );
    await send(bob, "hello from bob");
    await groupRow(carol).click();
    await until(
      async () => (await groupRow(carol).locator(".unread").textContent()) === "",
      "carol's unread count cleared",
    );
    await send(carol, "hello from carol");

    const expected = ["hello from alice", "hello from bob", "hello from carol"];
    const all = (page: Page) => page.locator("#messages .msg:not(.event) .body").allTextContents();
    for (const page of [alice, bob, carol]) {
      await until(async () => (await all(page)).join() === expected.join(), "all three, in order");
    }
    // Each page shows its own message as outgoing, with the others' senders named.
    expect(await bodies(alice, "out")).toEqual(["hello from alice"]);
    expect(await bodies(bob, "out")).toEqual(["hello from bob"]);
    expect(await bodies(carol, "out")).toEqual(["hello from carol"]);
    expect(await carol.locator("#messages .msg.in .who").allTextContents()).toEqual([
      "grp-page-alice",
      "grp-page-bob",
    ]);
    // The membership entry opens the thread, and the header lists the members.
    expect(await bob.locator("#messages .msg.event").first().textContent()).toContain(
      "grp-page-alice created the group “Trio” with you, grp-page-carol",
    );
    expect(await carol.locator("#peer-presence").textContent()).toBe(
      "3 members: grp-page-alice, grp-page-bob, you",
    );
    // Membership changes show in every member's thread, in order: alice (the creator) adds
    // dave, then carol leaves, and her page stops offering to send there.
    await alice.getByPlaceholder("member to add").fill("grp-page-dave");
    await alice.getByRole("button", { name: "Add member", exact: true }).click();
    await carol.getByRole("button", { name: "Leave group", exact: true }).click();
    const events = (page: Page) => page.locator("#messages .msg.event > span").allTextContents();
    await until(
      async () =>
        (await events(bob)).join("|") ===
        [
          "grp-page-alice created the group “Trio” with you, grp-page-carol",
          "grp-page-alice added grp-page-dave",
          "grp-page-carol left",
        ].join("|"),
      "bob sees the membership entries",
    );
    await until(
      async () =>
        (await carol.locator("#peer-presence").textContent()) ===
        "You are no longer in this group.",
      "carol's page knows she left",
    );
    expect(await carol.getByRole("button", { name: "Send", exact: true }).isDisabled()).toBe(true);
    expect(await alice.locator("#peer-presence").textContent()).toBe(
      "3 members: you, grp-page-bob, grp-page-dave",
    );
    // Nothing twice, even a moment later.
    await sleep(300);
    for (const page of [alice, bob, carol]) expect(await all(page)).toEqual(expected);
    for (const page of [alice, bob, carol]) await page.context().close();
  }, 90_000);

  it("a message written while its node is down survives a page reload and is sent after it", async () => {
    if (browser === undefined) throw new Error("no browser");
    port = await freePort();
    await startOnPort();
    // The page comes from the live node; its socket first goes to a node that is down (nothing
    // listens there), so what alice writes waits in the outbox.
    const downPort = await freePort();
    const context = await browser.newContext();
    const alice = await context.newPage();
    await alice.goto(`${base()}/`);
    await alice.waitForFunction("window.mrezhenDemoReady === true");
    await alice.getByLabel("Token (JWT)").fill(await mintToken({ sub: "reload-alice" }));
    await alice.getByLabel("Server URL").fill(`ws://127.0.0.1:${downPort}/ws`);
    await alice.getByRole("button", { name: "Connect", exact: true }).click();
    await until(
      async () => ((await alice.locator("#close-info").textContent()) ?? "").includes("Retrying"),
      "the page says it cannot reach the node and keeps trying",
    );
    await openThread(alice, "reload-bob");
    const composer = alice.getByLabel("Message", { exact: true });
    await composer.fill("written offline");
    await composer.press("Enter");
    const waiting = alice.locator("#messages .msg.out[data-status='waiting']");
    await until(async () => (await waiting.count()) === 1, "the message waits in the outbox");

    // Reload: the tab keeps its token (sessionStorage) and the SDK its outbox (localStorage);
    // the page connects by itself, to its own node this time, and the outbox goes.
    const bob = await connectTo(`ws://127.0.0.1:${port}/ws`, "reload-bob");
    await alice.reload();
    await alice.waitForFunction("window.mrezhenDemoReady === true");
    const frame = await bob.next("direct_message", 20_000);
    expect(frame["message"]).toMatchObject({ from: "reload-alice", content: "written offline" });
    await until(
      async () => ((await alice.getByRole("status").textContent()) ?? "").includes("Connected"),
      "connected after the reload",
    );
    await openThread(alice, "reload-bob");
    await until(
      async () => (await alice.locator("#messages .msg.out[data-status='waiting']").count()) === 0,
      "acked after the reload",
    );
    expect(await bodies(alice, "out")).toEqual(["written offline"]);
    await bob.expectNone("direct_message", 500);
    await context.close();
  }, 90_000);
});
