import type { Socket } from "node:net";
import WebSocket from "ws";
import type { Transport } from "../chat/ports.js";
import type { NodeMetrics } from "./metrics.js";

/** Bytes queued to a client that does not read, past which it is dropped (a slow consumer). */
export const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;

/**
 * Pongs to a client's WebSocket pings that may wait for the socket at once; a burst of pings up
 * to this size gets one pong each. Beyond it, pings are coalesced: the latest is answered as soon
 * as the pongs before it have been written (RFC 6455 §5.5.3 lets an endpoint answer only the
 * most recent ping), and the others are not answered. A burst of pings never closes a
 * connection.
 *
 * Why our own: ws answers pings by itself and, past 60 pongs not yet written, terminates the
 * socket (maxPendingAutoPongs), and a pong counts as not written until the event loop turn after
 * the read. So 61 pings in one TCP read (366 bytes) dropped even a client that reads everything,
 * without a close frame (the client saw 1006). The bound is what that limit protects: each
 * waiting pong holds a write request, and a client that sends pings without reading must not
 * make them pile up. 256 waiting pongs cost at most about 75 KiB, well under MAX_BUFFERED_BYTES.
 */
export const MAX_PONGS_WAITING = 256;

/**
 * Coalesces the frames written to one connection while the node handles one I/O event (a read
 * and the promise continuations it sets off) into one `writev`: the first write corks the TCP
 * socket, and one flush per batch uncorks every corked socket once that work is done. Frames for
 * a client with two messages in flight, answered from one read, leave in one system call;
 * nothing waits for other sockets' events (setImmediate would, adding latency).
 *
 * "Once that work is done": Node runs the process.nextTick queue before the promise
 * continuations, and a tick queued while they run after all of them. So the flush is queued as a
 * microtask that queues the tick: a plain tick queued by a write from the read itself (a store
 * done synchronously) would flush before the continuations, and their writes would need a
 * second system call (measured: 15-20% more CPU per message on one node).
 */
export class WriteBatcher {
  private corked: WsTransport[] = [];

  /** Holds `transport`'s writes until the end of this turn. */
  hold(transport: WsTransport): void {
    if (this.corked.length === 0) queueMicrotask(this.scheduleFlush);
    this.corked.push(transport);
  }

  private readonly scheduleFlush = (): void => {
    process.nextTick(this.flush);
  };

  private readonly flush = (): void => {
    const corked = this.corked;
    this.corked = [];
    for (const transport of corked) transport.flush();
  };
}

/** Adapts a ws socket to the core's Transport, and carries its heartbeat state. */
export class WsTransport implements Transport {
  /** Cleared at each heartbeat ping, set by the pong: false at the next beat means the peer is gone. */
  alive = true;
  /** Whether this turn's writes are being held for one writev (see WriteBatcher). */
  private corked = false;
  /** The number carried by the last whenReceived() ping. */
  private pingNumber = 0;
  /** whenReceived() calls waiting for their pong, oldest first; made when first needed. */
  private receivedWaiters:
    | { readonly number: number; readonly resolve: (ok: boolean) => void }[]
    | undefined;
  /** Made at the first ping from the client: most clients never send one (browsers cannot). */
  private pongs: PongState | undefined;

  constructor(
    private readonly socket: WebSocket,
    /** The TCP socket under `socket`, for corking. */
    private readonly tcp: Socket,
    private readonly batcher: WriteBatcher,
    private readonly metrics: NodeMetrics,
  ) {}

  get bufferedAmount(): number {
    return this.socket.bufferedAmount;
  }

  send(frame: string): void {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    if (this.socket.bufferedAmount > MAX_BUFFERED_BYTES) {
      // Memory per connection stays bounded: a client that stopped reading loses its
      // connection, not the node its memory. It reconnects and resyncs like after any drop.
      this.socket.terminate();
      return;
    }
    if (!this.corked) {
      this.corked = true;
      this.tcp.cork();
      this.batcher.hold(this);
    }
    this.socket.send(frame);
    this.metrics.frameOut();
  }

  /** Writes what this turn queued (called by the WriteBatcher). */
  flush(): void {
    this.corked = false;
    this.tcp.uncork();
  }

  close(code: number, reason: string): void {
    const state = this.socket.readyState;
    if (state === WebSocket.OPEN || state === WebSocket.CONNECTING) this.socket.close(code, reason);
  }

  terminate(): void {
    this.socket.terminate();
  }

  whenReceived(): Promise<boolean> {
    if (this.socket.readyState !== WebSocket.OPEN) return Promise.resolve(false);
    const number = ++this.pingNumber;
    const payload = Buffer.allocUnsafe(4);
    payload.writeUInt32BE(number >>> 0);
    this.socket.ping(payload);
    return new Promise((resolve) => {
      this.receivedWaiters ??= [];
      this.receivedWaiters.push({ number, resolve });
    });
  }

  /**
   * A pong arrived. It proves the peer alive, and answers every whenReceived() ping up to the one
   * it echoes: a client may answer only the latest of several pings (RFC 6455, 5.5.3), and the
   * pings left unanswered before it were received too. Heartbeat pongs carry no payload.
   */
  onPong(payload: Buffer): void {
    this.alive = true;
    const waiters = this.receivedWaiters;
    if (waiters === undefined || payload.length !== 4) return;
    const number = payload.readUInt32BE(0);
    while (waiters.length > 0 && (waiters[0]?.number as number) <= number)
      waiters.shift()?.resolve(true);
    if (waiters.length === 0) this.receivedWaiters = undefined;
  }

  /** The socket closed: whatever still waits for a pong will never get one. */
  onClosed(): void {
    const waiters = this.receivedWaiters;
    this.receivedWaiters = undefined;
    if (waiters !== undefined) for (const waiter of waiters) waiter.resolve(false);
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  ping(): void {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.ping();
  }

  /** Answers a WebSocket ping from the client with a pong, within MAX_PONGS_WAITING. */
  answerPing(payload: Buffer): void {
    this.pongs ??= { waiting: 0, owed: undefined, written: () => this.pongWritten() };
    const pongs = this.pongs;
    if (pongs.waiting >= MAX_PONGS_WAITING) {
      // Only the latest unanswered ping is remembered: at most 125 bytes per connection.
      pongs.owed = payload;
      return;
    }
    this.sendPong(pongs, payload);
  }

  private sendPong(pongs: PongState, payload: Buffer): void {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    pongs.waiting++;
    // The callback runs once the pong is handed to the kernel, or fails with the socket.
    this.socket.pong(payload, false, pongs.written);
  }

  private pongWritten(): void {
    const pongs = this.pongs;
    if (pongs === undefined) return;
    pongs.waiting--;
    const owed = pongs.owed;
    if (owed !== undefined) {
      pongs.owed = undefined;
      this.sendPong(pongs, owed);
    }
  }
}

/** The pongs of one connection (see MAX_PONGS_WAITING). */
interface PongState {
  /** Pongs given to ws whose write has not completed. */
  waiting: number;
  /** The payload of the latest ping left unanswered while MAX_PONGS_WAITING pongs waited. */
  owed: Buffer | undefined;
  /** The write callback of every pong of this connection (one closure, not one per pong). */
  readonly written: () => void;
}
