import WebSocket from "ws";
import type { Transport } from "../chat/ports.js";
import type { NodeMetrics } from "./metrics.js";

/** Bytes queued to a client that does not read, past which it is dropped (a slow consumer). */
export const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;

/** Adapts a ws socket to the core's Transport, and carries its heartbeat state. */
export class WsTransport implements Transport {
  /** Cleared at each heartbeat ping, set by the pong: false at the next beat means the peer is gone. */
  alive = true;

  constructor(
    private readonly socket: WebSocket,
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
    this.socket.send(frame);
    this.metrics.frameOut();
  }

  close(code: number, reason: string): void {
    const state = this.socket.readyState;
    if (state === WebSocket.OPEN || state === WebSocket.CONNECTING) this.socket.close(code, reason);
  }

  terminate(): void {
    this.socket.terminate();
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
