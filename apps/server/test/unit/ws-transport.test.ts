import type { Socket } from "node:net";
import { describe, expect, it } from "vitest";
import type WebSocket from "ws";
import type { NodeMetrics } from "../../src/http/metrics.js";
import { MAX_PONGS_WAITING, WriteBatcher, WsTransport } from "../../src/http/ws-transport.js";

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

describe("WsTransport.answerPing", () => {
  /** A ws socket whose pongs stay "unwritten" until the test completes their write callbacks. */
  function pongRecorder() {
    const pongs: { payload: string; written: () => void }[] = [];
    const socket = {
      readyState: 1,
      bufferedAmount: 0,
      pong: (payload: Buffer, _mask: boolean, written: () => void) =>
        pongs.push({ payload: payload.toString(), written }),
    };
    const tcp = { cork: () => {}, uncork: () => {} };
    const transport = new WsTransport(
      socket as unknown as WebSocket,
      tcp as unknown as Socket,
      new WriteBatcher(),
      metrics,
    );
    return { transport, pongs };
  }

  it(`answers each ping of a burst of ${MAX_PONGS_WAITING}, then only the latest once a pong is written`, () => {
    const { transport, pongs } = pongRecorder();
    for (let i = 0; i < MAX_PONGS_WAITING + 100; i++) transport.answerPing(Buffer.from(`p${i}`));
    expect(pongs.map((pong) => pong.payload)).toEqual(
      Array.from({ length: MAX_PONGS_WAITING }, (_, i) => `p${i}`),
    );
    // The first pong reaches the kernel: the latest ping (not the 101 between) gets its pong.
    pongs[0]?.written();
    expect(pongs.length).toBe(MAX_PONGS_WAITING + 1);
    expect(pongs.at(-1)?.payload).toBe(`p${MAX_PONGS_WAITING + 99}`);
    // Nothing else is owed; with room again, each new ping is answered at once.
    pongs[1]?.written();
    expect(pongs.length).toBe(MAX_PONGS_WAITING + 1);
    transport.answerPing(Buffer.from("again"));
    expect(pongs.at(-1)?.payload).toBe("again");
  });
});
