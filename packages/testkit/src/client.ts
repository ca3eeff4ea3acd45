import WebSocket from "ws";

/** A decoded server frame. */
export type Frame = { type: string } & Record<string, unknown>;

export interface CloseInfo {
  readonly code: number;
  readonly reason: string;
}

/** Which frames a waiter takes: one type, any of several, or (undefined) any frame. */
type Wanted = string | readonly string[] | undefined;

function matches(wanted: Wanted, frame: Frame): boolean {
  if (wanted === undefined) return true;
  return typeof wanted === "string" ? frame.type === wanted : wanted.includes(frame.type);
}

interface Waiter {
  readonly type: Wanted;
  readonly resolve: (frame: Frame) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/**
 * A WebSocket client for tests. Every frame the server sends is kept in arrival order until a
 * test takes it with {@link next}, so no frame is missed between two awaits.
 *
 * @example
 * const alice = await TestClient.connect(`${node.wsUrl}?token=${token}`);
 * alice.send({ type: "ping" });
 * expect((await alice.next("pong")).timestamp).toBeTypeOf("string");
 */
export class TestClient {
  /** Frames received and not yet taken, in arrival order. */
  readonly inbox: Frame[] = [];
  /** Every frame received, taken or not. */
  readonly received: Frame[] = [];
  readonly closed: Promise<CloseInfo>;
  private readonly waiters: Waiter[] = [];

  private constructor(readonly socket: WebSocket) {
    socket.on("message", (data) => this.onFrame(JSON.parse(data.toString()) as Frame));
    this.closed = new Promise((resolve) => {
      socket.on("close", (code, reason) => {
        const info = { code, reason: reason.toString() };
        for (const waiter of this.waiters.splice(0)) {
          clearTimeout(waiter.timer);
          waiter.reject(
            new Error(
              `closed (${code} ${info.reason}) while waiting for ${waiter.type ?? "a frame"}`,
            ),
          );
        }
        resolve(info);
      });
    });
  }

  /** Opens a connection; rejects with the HTTP status when the server refuses the upgrade. */
  static connect(url: string, options: WebSocket.ClientOptions = {}): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, options);
      const client = new TestClient(socket);
      socket.once("open", () => resolve(client));
      socket.once("unexpected-response", (_request, response) => {
        reject(new UpgradeRefused(response.statusCode ?? 0));
        socket.terminate();
      });
      socket.once("error", reject);
    });
  }

  send(frame: unknown): void {
    this.socket.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /**
   * The next frame of `type` (one type, any of a list, or any frame), waiting up to `timeoutMs`.
   * Frames of other types stay queued for later calls.
   */
  next(type?: string | readonly string[], timeoutMs = 3000): Promise<Frame> {
    const index = this.inbox.findIndex((frame) => matches(type, frame));
    if (index >= 0) return Promise.resolve(this.inbox.splice(index, 1)[0] as Frame);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        const seen = this.inbox.map((frame) => frame.type).join(", ") || "nothing";
        reject(new Error(`no ${String(type ?? "frame")} within ${timeoutMs} ms (queued: ${seen})`));
      }, timeoutMs);
      const waiter: Waiter = { type, resolve, reject, timer };
      this.waiters.push(waiter);
    });
  }

  /** Resolves after `ms` if no frame of `type` arrived meanwhile; rejects with the frame otherwise. */
  async expectNone(type: string, ms = 200): Promise<void> {
    const frame = await this.next(type, ms).catch(() => undefined);
    if (frame !== undefined) throw new Error(`unexpected ${type}: ${JSON.stringify(frame)}`);
  }

  /** Takes every queued frame of `type`. */
  drain(type: string): Frame[] {
    const taken = this.inbox.filter((frame) => frame.type === type);
    this.inbox.splice(0, this.inbox.length, ...this.inbox.filter((frame) => frame.type !== type));
    return taken;
  }

  async close(): Promise<CloseInfo> {
    if (
      this.socket.readyState === WebSocket.OPEN ||
      this.socket.readyState === WebSocket.CONNECTING
    ) {
      this.socket.close();
    }
    return this.closed;
  }

  private onFrame(frame: Frame): void {
    this.received.push(frame);
    const index = this.waiters.findIndex((waiter) => matches(waiter.type, frame));
    if (index < 0) {
      this.inbox.push(frame);
      return;
    }
    const [waiter] = this.waiters.splice(index, 1) as [Waiter];
    clearTimeout(waiter.timer);
    waiter.resolve(frame);
  }
}

/** The server answered the upgrade with an HTTP status instead of switching protocols. */
export class UpgradeRefused extends Error {
  constructor(readonly status: number) {
    super(`upgrade refused with HTTP ${status}`);
  }
}
