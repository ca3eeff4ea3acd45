import type { Socket } from "node:net";
import WebSocket from "ws";
import type { Transport } from "../chat/ports.js";
import type { NodeMetrics } from "./metrics.js";

/** Bytes queued to a client that does not read, past which it is dropped (a slow consumer). */
export const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;

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
}
