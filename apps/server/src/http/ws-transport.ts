import type { Socket } from "node:net";
import { CloseCode } from "@mrezhen/protocol";
import WebSocket from "ws";
import type { Transport } from "../chat/ports.js";
import type { NodeMetrics, SlowReaderTrigger } from "./metrics.js";

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
 * How long a slow reader's 1013 close frame may wait behind its unsent bytes before the socket
 * is destroyed. A client that is merely slow reads up to the close frame and learns why (1013:
 * reconnect with backoff); one that stopped reading never will, and its buffers are freed now
 * rather than after ws's 30 s closing handshake or the next missed heartbeat.
 */
export const SLOW_READER_GRACE_MS = 1000;
export const SLOW_READER_REASON = "slow reader: too much unsent data";

/**
 * Frames longer than this (UTF-16 units) are handed to ws as a Buffer. Node copies a string that
 * cannot be written at once into a buffer sized for the worst case of UTF-8, three bytes per
 * character, and keeps all of it until the write completes: a 3 MB history answer a client does
 * not read held 9 MB, three times what bufferedAmount (and so every limit here) counts. Encoded
 * here, it holds its exact size. Small frames stay strings: Node writes those from the stack when
 * the kernel takes them at once, the usual case, and a Buffer would cost an allocation each.
 */
const ENCODE_FRAMES_OVER = 16 * 1024;
/** ws's send options for a text frame given as a Buffer (one object, not one per send). */
const TEXT_FRAME = { binary: false };

/** Where a batch reports connections' unsent bytes (the node's UnsentBudget). */
export interface UnsentWatcher {
  /** `transport` has `bytes` unsent after this batch (called when > 0, or when it was watched). */
  observe(transport: WsTransport, bytes: number): void;
  /** The batch is written: the watcher may act on what it observed. */
  afterBatch(): void;
}

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

  /**
   * `unsent` learns, after each batch is written, which connections the kernel did not take
   * everything from: the only moment unsent bytes can grow, so the budget never has to look at
   * the connections that have none (see UnsentBudget).
   */
  constructor(private readonly unsent?: UnsentWatcher) {}

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
    const unsent = this.unsent;
    for (const transport of corked) {
      transport.flush();
      if (unsent === undefined) continue;
      // uncork wrote synchronously what the kernel would take; what is left is unsent.
      const bytes = transport.bufferedAmount;
      if (bytes > 0 || transport.watched) unsent.observe(transport, bytes);
    }
    unsent?.afterBatch();
  };
}

/** Adapts a ws socket to the core's Transport, and carries its heartbeat state. */
export class WsTransport implements Transport {
  /**
   * When the heartbeat last pinged (performance.now()) with no pong since; 0 once any pong came
   * (the flow-control pings' pongs prove the peer alive too). See Connections.beat.
   */
  pingedAt = 0;
  /** The previous heartbeat ping went unanswered for a whole interval too (see Connections.beat). */
  missedPing = false;
  /** Set while the node's UnsentBudget counts this connection (it had unsent bytes). */
  watched = false;
  /** This connection's unsent bytes as the budget's running total last counted them. */
  unsentCounted = 0;
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
  /** Set once closed as a slow reader: destroys the socket if the close frame is still stuck. */
  private slowReaderTimer: NodeJS.Timeout | undefined;

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
      this.closeSlowReader("connection");
      return;
    }
    if (!this.corked) {
      this.corked = true;
      this.tcp.cork();
      this.batcher.hold(this);
    }
    if (frame.length > ENCODE_FRAMES_OVER) this.socket.send(Buffer.from(frame, "utf8"), TEXT_FRAME);
    else this.socket.send(frame);
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
    this.pingedAt = 0;
    this.missedPing = false;
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
    // And the slow-reader timer goes, so that nothing keeps this transport alive.
    clearTimeout(this.slowReaderTimer);
  }

  /** Whether this connection is being closed as a slow reader (its bytes are about to be freed). */
  get closingAsSlowReader(): boolean {
    return this.slowReaderTimer !== undefined;
  }

  /**
   * Closes a client that does not read: a 1013 close frame, queued behind what it has not read,
   * then, if that frame is still not written after SLOW_READER_GRACE_MS, a terminate, which frees
   * the unsent bytes (the client then sees 1006). Idempotent.
   */
  closeSlowReader(trigger: SlowReaderTrigger): void {
    if (this.slowReaderTimer !== undefined || this.socket.readyState === WebSocket.CLOSED) return;
    this.metrics.slowReaderClosed(trigger);
    if (this.socket.readyState === WebSocket.OPEN)
      this.socket.close(CloseCode.TRY_AGAIN_LATER, SLOW_READER_REASON);
    this.slowReaderTimer = setTimeout(() => {
      // Nothing left in our buffers means the close frame reached the kernel: ws's closing
      // handshake finishes the job, and no memory is held meanwhile.
      if (this.socket.readyState !== WebSocket.CLOSED && this.socket.bufferedAmount > 0)
        this.socket.terminate();
    }, SLOW_READER_GRACE_MS);
    this.slowReaderTimer.unref();
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
