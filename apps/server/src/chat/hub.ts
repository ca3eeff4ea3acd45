import type {
  Broker,
  BrokerHandler,
  MessageEvent,
  MessageStore,
  PresenceChange,
  UserEvent,
} from "@mrezhen/engine";
import { directMessageFrame, presenceFrame } from "@mrezhen/protocol";
import type { ChatMetrics, Logger } from "./ports.js";
import type { Session, UserLimits } from "./session.js";

/** The sessions of one user on this node, and the broker subscription that feeds them. */
interface LocalUser {
  readonly sessions: Set<Session>;
  /** The user's read and typing budgets on this node, shared by its sessions. */
  readonly limits: UserLimits;
  /** Resolves once the broker routes this user's events here. */
  subscribed: Promise<void>;
  /** The last subscription attempt failed: the next session to arrive tries again. */
  failed: boolean;
}

/**
 * The node's local socket map (user → open sessions) and the receiving end of the broker. A
 * user's broker subscription lives from its first local session until release() after its last.
 */
export class Hub implements BrokerHandler {
  private readonly users = new Map<string, LocalUser>();
  private sessionCount = 0;
  /** Sessions that want presence frames: when none does, presence changes cost nothing here. */
  private presenceListeners = 0;

  constructor(
    private readonly broker: Broker,
    private readonly messages: MessageStore,
    private readonly log: Logger,
    private readonly metrics: ChatMetrics,
  ) {
    broker.setHandler(this);
  }

  /** Open sessions on this node. */
  get connections(): number {
    return this.sessionCount;
  }

  /** Adds a session; resolves once its user's events are routed to this node. */
  add(session: Session): Promise<void> {
    let user = this.users.get(session.userId);
    if (user === undefined) {
      user = {
        sessions: new Set(),
        limits: { readTokens: 0, readRefilledAt: 0, typingBudget: 0, typingSecond: 0 },
        subscribed: Promise.resolve(),
        failed: true,
      };
      this.users.set(session.userId, user);
    }
    if (user.failed) {
      // First session, or the previous attempt failed (a Redis blip): subscribe (again), rather
      // than let every later session inherit one failure.
      const local = user;
      local.failed = false;
      local.subscribed = this.broker.subscribe(session.userId);
      local.subscribed.catch(() => {
        local.failed = true;
      });
    }
    user.sessions.add(session);
    session.limits = user.limits;
    this.sessionCount++;
    if (session.wantsPresence) this.presenceListeners++;
    return user.subscribed;
  }

  /** Removes a session. Its user stays subscribed until release(). */
  remove(session: Session): void {
    if (!this.users.get(session.userId)?.sessions.delete(session)) return;
    this.sessionCount--;
    if (session.wantsPresence) this.presenceListeners--;
  }

  /**
   * Unsubscribes a user that has no session left on this node. Called after presence has
   * marked the connection gone, so that messages sent in between are either routed here (and
   * requeued) or queued by the sender's append.
   */
  async release(userId: string): Promise<void> {
    const user = this.users.get(userId);
    if (user === undefined || user.sessions.size > 0) return;
    this.users.delete(userId);
    await this.broker.unsubscribe(userId);
  }

  /** Every open session on this node (for broadcasts, drain and sweeps). */
  *sessions(): IterableIterator<Session> {
    for (const user of this.users.values()) yield* user.sessions;
  }

  onUserEvent(userId: string, event: UserEvent): void {
    const sessions = this.users.get(userId)?.sessions;
    if (event.kind === "frame") {
      // Receipts and typing: ephemeral, never held or requeued.
      if (sessions !== undefined) for (const session of sessions) session.send(event.frame);
      return;
    }
    let frame: string | undefined;
    if (sessions !== undefined) {
      for (const session of sessions) {
        if (session.connId === event.excludeConnId) continue;
        frame ??= directMessageFrame(event.messageJson, event.position, false);
        session.deliver(event.messageId, event.position, frame);
        this.metrics.deliveredLive();
      }
    }
    // The recipient left this node between the sender's append and now: give the message back
    // to the offline queue (if the user is offline everywhere) rather than drop it. Copies for
    // the sender's other devices are not queued: the sender has the message already.
    if (frame === undefined && event.excludeConnId === undefined) this.requeue(userId, event);
  }

  /**
   * Announces a presence change to the sessions that want it. The protocol's frame lists every
   * online user, so it is built once per change and only when some session here will get it.
   */
  onPresence(change: PresenceChange): void {
    if (this.presenceListeners === 0) return;
    const frame = presenceFrame(change.userId, change.status, [...change.online]);
    for (const user of this.users.values()) {
      for (const session of user.sessions) if (session.wantsPresence) session.send(frame);
    }
  }

  private requeue(userId: string, event: MessageEvent): void {
    const message = {
      messageId: event.messageId,
      messageJson: event.messageJson,
      position: event.position,
    };
    this.messages.requeueIfOffline(userId, message).then(
      (queued) =>
        this.log.debug(
          { userId, messageId: event.messageId, queued },
          "late message for a departed user",
        ),
      (error: unknown) =>
        this.log.error(
          { err: error, userId, messageId: event.messageId },
          "could not requeue a late message; it stays in history",
        ),
    );
  }
}
