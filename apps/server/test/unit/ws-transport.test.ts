import type { Socket } from "node:net";
import { describe, expect, it } from "vitest";
import type WebSocket from "ws";
import type { NodeMetrics } from "../../src/http/metrics.js";
import { WriteBatcher, WsTransport } from "../../src/http/ws-transport.js";

/** A TCP socket that counts corks, and a ws socket that records whether each frame was held. */
function fakeConnection() {
  const tcp = { corks: 0, uncorks: 0, cork: () => tcp.corks++, uncork: () => tcp.uncorks++ };
  const sent: { frame: string; held: boolean }[] = [];
  const socket = {
    readyState: 1,
    bufferedAmount: 0,
    send: (frame: string) => sent.push({ frame, held: tcp.corks > tcp.uncorks }),
  };
  return { tcp, sent, socket };
}

const metrics = { frameOut: () => {} } as unknown as NodeMetrics;

describe("WriteBatcher", () => {
  it("holds one I/O event's frames, its promise continuations' included, for one write", async () => {
    const batcher = new WriteBatcher();
    const { tcp, sent, socket } = fakeConnection();
    const transport = new WsTransport(
      socket as unknown as WebSocket,
      tcp as unknown as Socket,
      batcher,
      metrics,
    );
    // As in a read callback: one frame sent synchronously (a store done in place, delivered at
    // once), one from a promise continuation (the ack after the store resolved).
    await new Promise<void>((resolve) =>
      setImmediate(() => {
        transport.send("delivery");
        Promise.resolve()
          .then(() => transport.send("ack"))
          .then(() => setImmediate(resolve));
      }),
    );
    expect(sent).toEqual([
      { frame: "delivery", held: true },
      { frame: "ack", held: true },
    ]);
    expect({ corks: tcp.corks, uncorks: tcp.uncorks }).toEqual({ corks: 1, uncorks: 1 });
  });

  it("lets the next event's frames go in a write of their own", async () => {
    const batcher = new WriteBatcher();
    const { tcp, socket } = fakeConnection();
    const transport = new WsTransport(
      socket as unknown as WebSocket,
      tcp as unknown as Socket,
      batcher,
      metrics,
    );
    for (const frame of ["first", "second"]) {
      await new Promise<void>((resolve) =>
        setImmediate(() => {
          transport.send(frame);
          setImmediate(resolve);
        }),
      );
    }
    expect({ corks: tcp.corks, uncorks: tcp.uncorks }).toEqual({ corks: 2, uncorks: 2 });
  });
});
