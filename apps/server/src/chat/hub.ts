import type {
  Broker,
  BrokerHandler,
  ControlEvent,
  GroupState,
  GroupStore,
  MessageEvent,
  MessageStore,
  PresenceChange,
  PresenceStore,
  UserEvent,
} from "@mrezhen/engine";
import {
  CloseCode,
  directMessageFrame,
  ErrorCode,
  errorFrame,
  type GroupEvent,
  groupMessageFrame,
  groupPresenceFrame,
  type PresenceStatus,
  presenceDeltaFrame,
  presenceFrame,
} from "@mrezhen/protocol";
import type { ChatEvents, ChatMetrics, Logger } from "./ports.js";
import type { Session, UserLimits } from "./session.js";

/** The sessions of one user on this node, and the broker subscription that feeds them. */
interface LocalUser {
  readonly userId: string;
  readonly sessions: Set<Session>;
  /** The user's read and typing budgets on this node, shared by its sessions. */
  readonly limits: UserLimits;
  /** Resolves once the broker routes this user's events here. */
  subscribed: Promise<void>;
  /** The last subscription attempt failed: the next session to arrive tries again. */
  failed: boolean;
  /**
   * The user's contacts this node watches for its `presence=contacts` sessions (Hub.watchers),
   * read once when the first such session arrives and kept while the user has a session here.
   */
  contacts?: ReadonlySet<string> | undefined;
  /** The read of `contacts` under way or done (undefined before it, and after a failure). */
  contactsLoad?: Promise<void> | undefined;
  /** Sessions that get presence deltas: `presence=contacts` ones, from their first snapshot on. */
  deltaListeners?: Set<Session> | undefined;
  /**
   * The groups of the user this node watches for its `presence=contacts` sessions (Hub.groups),
   * read once when the first such session arrives, then kept up to date by the membership
   * entries of the user's own stream, while the user has a session here.
   */
  groups?: Set<WatchedGroup> | undefined;
  /** The read of `groups` under way or done (undefined before it, and after a failure). */
  groupsLoad?: Promise<void> | undefined;
  /** Membership entries that arrived while `groups` was being read: applied after it. */
  pendingGroupEvents?: [string, GroupEvent][] | undefined;
}

/**
 * A group that local users with `presence=contacts` sessions are in, and its members as this
 * node knows them: read once, then kept up to date by the membership entries its local members
 * receive (every member gets every membership entry of its group, in order).
 */
interface WatchedGroup {
  readonly groupId: string;
  readonly members: Set<string>;
  /** The local users watching it; the group is forgotten when none is left. */
  readonly local: Set<LocalUser>;
}

/**
 * Contacts watched per user: its most recent conversations, at most this many. Bounds what one
 * connection costs the node (memory: two set entries per contact; one engine read of this many
 * ids at connect) and what one presence change can fan out to.
 */
export const CONTACTS_WATCHED = 1000;

/** Sub-ticks of the coalescing wheel per window (see Hub.tick). */
const WHEEL_SLOTS = 4;

export interface HubOptions {
  /**
   * Presence changes of one user are announced at most once per this many milliseconds (0: each
   * at once); see Hub.onPresence.
   */
  readonly presenceCoalesceMs: number;
  /** Told of every presence change this node hears (webhooks); absent: nothing is done. */
  readonly events?: ChatEvents | undefined;
}

/**
 * The close code of the server API's disconnect when the backend gives none: in the range of
 * application codes (4000-4999), which clients do not retry blindly (shouldReconnect).
 */
export const DISCONNECTED_BY_SERVICE = 4003;
export const DISCONNECTED_REASON = "disconnected by the service";

/**
 * The node's local socket map (user → open sessions) and the receiving end of the broker. A
 * user's broker subscription lives from its first local session until release() after its last.
 */
export class Hub implements BrokerHandler {
  private readonly users = new Map<string, LocalUser>();
  private sessionCount = 0;
  /**
   * Sessions that want the full presence frames (`presence=all`): when none does, no online list
   * is ever built here.
   */
  private fullListeners = 0;
  /**
   * Contact → the local users watching it (those with a `presence=contacts` session whose
   * contacts include it). A change of a user nobody here watches costs one lookup.
   */
  private readonly watchers = new Map<string, Set<LocalUser>>();
  /** Groups watched on this node (see WatchedGroup), by id. */
  private readonly groups = new Map<string, WatchedGroup>();
  /**
   * User → the watched groups it is a member of: a change of a user in no watched group costs
   * one lookup, and one in 500 costs O(local listeners in them), each told once.
   */
  private readonly groupsOfMember = new Map<string, Set<WatchedGroup>>();
  /** This node's online set (PresenceStore.view), in the order of the changes it announces. */
  private readonly online: ReadonlySet<string>;

  /**
   * Coalescing: users whose presence was announced less than a window ago → the status
   * announced. While a user is here, its changes are merged (not announced); see onPresence.
   */
  private readonly windows = new Map<string, PresenceStatus>();
  /**
   * The wheel that closes windows: WHEEL_SLOTS + 1 buckets of users, one filled per sub-tick.
   * A timer wheel rather than a timer per user: one interval for the node, running only while
   * a window is open, and a sub-tick costs O(windows it closes).
   */
  private readonly wheel: string[][] = Array.from({ length: WHEEL_SLOTS + 1 }, () => []);
  private ticks = 0;
  private ticker: NodeJS.Timeout | undefined;
  private readonly coalesceMs: number;
  private readonly events: ChatEvents | undefined;
  private closed = false;

  constructor(
    private readonly broker: Broker,
    private readonly messages: MessageStore,
    private readonly groupStore: GroupStore,
    presence: PresenceStore,
    private readonly log: Logger,
    private readonly metrics: ChatMetrics,
    options: HubOptions = { presenceCoalesceMs: 0 },
  ) {
    this.online = presence.view;
    this.coalesceMs = options.presenceCoalesceMs;
    this.events = options.events;
    broker.setHandler(this);
  }

  /** Open sessions on this node. */
  get connections(): number {
    return this.sessionCount;
  }

  /**
   * Adds a session; resolves once its user's events are routed to this node. A
   * `presence=contacts` session then needs {@link watchContacts}.
   */
  add(session: Session): Promise<void> {
    let user = this.users.get(session.userId);
    if (user === undefined) {
      user = {
        userId: session.userId,
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
    if (session.presence === "all") this.fullListeners++;
    return user.subscribed;
  }

  /**
   * Makes a `presence=contacts` session a delta listener (see listenToContacts); resolves at once
   * for the other sessions. Called once the user's events are routed here (add), so that a
   * membership entry of the user's groups arriving during their read is never missed.
   */
  watchContacts(session: Session): Promise<void> {
    const user = this.users.get(session.userId);
    if (session.presence !== "contacts" || user === undefined || !user.sessions.has(session))
      return RESOLVED;
    return this.listenToContacts(user, session);
  }

  /** Removes a session. Its user stays subscribed until release(). */
  remove(session: Session): void {
    const user = this.users.get(session.userId);
    if (user === undefined || !user.sessions.delete(session)) return;
    this.sessionCount--;
    if (session.presence === "all") this.fullListeners--;
    user.deltaListeners?.delete(session);
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
    this.unwatch(user);
    this.unwatchGroups(user);
    await this.broker.unsubscribe(userId);
  }

  /**
   * Answers `get_online_users` with `users`: those of them online, from this node's view. O(asked)
   * and no engine call, and consistent with the presence frames this node sends.
   */
  whichOnline(users: readonly string[]): string[] {
    return users.filter((userId) => this.online.has(userId));
  }

  /** Stops the coalescing timer. Idempotent; changes after it are announced at once. */
  close(): void {
    this.closed = true;
    clearInterval(this.ticker);
    this.ticker = undefined;
    this.windows.clear();
    for (const bucket of this.wheel) bucket.length = 0;
  }

  onUserEvent(userId: string, event: UserEvent): void {
    const sessions = this.users.get(userId)?.sessions;
    if (event.kind === "control") {
      if (sessions !== undefined) this.control(userId, sessions, event);
      return;
    }
    if (event.kind === "frame") {
      // Receipts and typing: ephemeral, never held or requeued.
      if (sessions !== undefined) for (const session of sessions) session.send(event.frame);
      return;
    }
    if (event.groupId !== undefined) this.onGroupEntry(userId, event.groupId, event.messageJson);
    let frame: string | undefined;
    if (sessions !== undefined) {
      for (const session of sessions) {
        if (session.connId === event.excludeConnId) continue;
        frame ??=
          event.groupId === undefined
            ? directMessageFrame(event.messageJson, event.position, false)
            : groupMessageFrame(event.groupId, event.messageJson, event.position, false);
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
   * A presence change, in the engine's order. Announced to the sessions that want it, coalesced
   * per user: the first change of a user is announced at once and opens a window of
   * presenceCoalesceMs; changes within it are merged; when it ends, the user's state then is
   * announced if it differs from the one announced (which opens a new window), so a user
   * flapping between online and offline costs each listener at most one frame per window, and
   * the last frame always tells the final state.
   *
   * Only the announcements are coalesced. The engine's registration, which decides whether a
   * message is delivered live or queued, is never delayed: a message sent while the window hides
   * a change is still delivered or queued by the real state.
   *
   * Each node coalesces its own announcements from its own ordered stream of changes, so nodes
   * need not agree on windows, and every node's last frame for a user tells that user's state.
   */
  onPresence(change: PresenceChange): void {
    const { userId, status } = change;
    this.events?.presenceChanged(userId, status, change.version);
    if (!this.listened(userId)) return;
    if (this.coalesceMs === 0 || this.closed) {
      this.announce(userId, status);
      return;
    }
    if (this.windows.has(userId)) return; // merged: the window's end announces the state then
    this.announce(userId, status);
    this.openWindow(userId, status);
  }

  /** Whether a change of `userId` is for any session here (false: it costs nothing more). */
  private listened(userId: string): boolean {
    return this.fullListeners > 0 || this.watchers.has(userId) || this.groupsOfMember.has(userId);
  }

  /**
   * Sends a change: the full frame, with the online list as it stands now, to `presence=all`
   * sessions (built once, only when one is here: it is O(users online)), and the delta to the
   * `presence=contacts` sessions watching the user (O(watchers), whatever the number online).
   */
  private announce(userId: string, status: PresenceStatus): void {
    if (this.fullListeners > 0) {
      const frame = presenceFrame(userId, status, [...this.online]);
      for (const user of this.users.values()) {
        for (const session of user.sessions) if (session.presence === "all") session.send(frame);
      }
    }
    const watching = this.watchers.get(userId);
    if (watching !== undefined) {
      const delta = presenceDeltaFrame(userId, status);
      for (const user of watching) {
        if (user.deltaListeners !== undefined)
          for (const session of user.deltaListeners) session.send(delta);
      }
    }
    const shared = this.groupsOfMember.get(userId);
    if (shared !== undefined) this.announceToGroups(userId, status, shared);
  }

  /**
   * `group_presence` to the local listeners who share a group with `userId`: each local user
   * (so each connection) once, naming the first shared group met, however many groups the two
   * share. Presence is per user, so more frames would say nothing new: a user in 500 groups of
   * 1,000 costs each node one frame per listening connection of its distinct co-members here,
   * not 500 × 1,000, and coalescing (onPresence) bounds how often.
   */
  private announceToGroups(
    userId: string,
    status: PresenceStatus,
    shared: ReadonlySet<WatchedGroup>,
  ): void {
    const told = new Set<LocalUser>();
    for (const group of shared) {
      let frame: string | undefined;
      for (const user of group.local) {
        if (user.userId === userId || told.has(user)) continue;
        told.add(user);
        if (user.deltaListeners === undefined) continue;
        frame ??= groupPresenceFrame(group.groupId, userId, status);
        for (const session of user.deltaListeners) session.send(frame);
      }
    }
  }

  private openWindow(userId: string, announced: PresenceStatus): void {
    this.windows.set(userId, announced);
    // Filled until the next sub-tick, closed WHEEL_SLOTS sub-ticks after that one: a window
    // lasts at least presenceCoalesceMs and at most a sub-tick more.
    (this.wheel[(this.ticks + 1) % this.wheel.length] as string[]).push(userId);
    if (this.ticker === undefined) {
      this.ticker = setInterval(() => this.tick(), this.coalesceMs / WHEEL_SLOTS);
      this.ticker.unref();
    }
  }

  /** A sub-tick of the wheel: closes the windows opened WHEEL_SLOTS sub-ticks before the last. */
  private tick(): void {
    this.ticks++;
    const slot = (this.ticks + 1) % this.wheel.length;
    const closing = this.wheel[slot] as string[];
    // Windows reopened below belong to this same slot: give them a fresh bucket.
    this.wheel[slot] = [];
    for (const userId of closing) {
      const announced = this.windows.get(userId);
      if (announced === undefined) continue;
      this.windows.delete(userId);
      const now: PresenceStatus = this.online.has(userId) ? "online" : "offline";
      if (now === announced) continue;
      if (!this.listened(userId)) continue; // nobody to tell
      this.announce(userId, now);
      this.openWindow(userId, now);
    }
    if (this.windows.size === 0) {
      clearInterval(this.ticker);
      this.ticker = undefined;
    }
  }

  /**
   * Makes `session` (presence=contacts) a delta listener: reads its user's contacts (once per
   * local user), watches them, then sends the session one `online` delta per contact online now.
   * The snapshot and the start of its deltas are one synchronous step on this node's view, so
   * the snapshot followed by the deltas always tells the current state, with no gap.
   *
   * Why contacts are watched here, by the nodes that hold the listeners, rather than pushed by
   * the node where a change happens: every node already receives every change in one order
   * (O(1) per change, the engine's broadcast), so a change costs each node one map lookup and
   * frames only to the watchers, with no Redis work per change at all. It also covers every
   * source of changes alike (a crashed node's users swept offline, re-asserts, a resynchronised
   * mirror), which a push from the connecting node would miss, and the order of frames is the
   * engine's, so coalescing cannot reorder them across nodes. The price is at connect: one read
   * of at most CONTACTS_WATCHED ids per user and node. A conversation started during the
   * connection is watched from the next connection (`get_online_users` with `users` answers
   * about anyone meanwhile).
   */
  private async listenToContacts(user: LocalUser, session: Session): Promise<void> {
    user.contactsLoad ??= this.loadContacts(user);
    user.groupsLoad ??= this.loadGroups(user);
    await Promise.all([user.contactsLoad, user.groupsLoad]);
    if (session.isClosed || !user.sessions.has(session) || user.contacts === undefined) return;
    if (user.groups === undefined) return;
    user.deltaListeners ??= new Set();
    user.deltaListeners.add(session);
    for (const contact of user.contacts)
      if (this.online.has(contact)) session.send(presenceDeltaFrame(contact, "online"));
    // The groups' snapshot: each online co-member once, as its changes will be told.
    const told = new Set<string>([user.userId]);
    for (const group of user.groups) {
      for (const member of group.members) {
        if (told.has(member) || !this.online.has(member)) continue;
        told.add(member);
        session.send(groupPresenceFrame(group.groupId, member, "online"));
      }
    }
  }

  /**
   * Reads the user's groups (once per local user, like its contacts) and watches them. Groups
   * another local user watches already are not read again into the node's view: their members
   * are kept up to date by that user's stream.
   */
  private async loadGroups(user: LocalUser): Promise<void> {
    let states: GroupState[];
    user.pendingGroupEvents = [];
    try {
      states = await this.groupStore.groupsOf(user.userId, Number.MAX_SAFE_INTEGER);
    } catch (error) {
      user.groupsLoad = undefined; // the next contacts session of the user tries again
      user.pendingGroupEvents = undefined;
      throw error;
    }
    const pending = user.pendingGroupEvents;
    user.pendingGroupEvents = undefined;
    // Released meanwhile: a later session makes a new LocalUser, which reads them again.
    if (this.users.get(user.userId) !== user) return;
    user.groups = new Set();
    for (const state of states) this.watchGroup(user, state.groupId, state.members);
    // Entries that arrived during the read, which the read may or may not include: applying
    // them again is harmless (adding a member twice or removing one twice changes nothing).
    for (const [groupId, event] of pending) this.applyGroupEvent(user, groupId, event);
  }

  /** Adds `user` to the watchers of a group, reading the group's members into the view if new. */
  private watchGroup(user: LocalUser, groupId: string, members: Iterable<string>): WatchedGroup {
    let group = this.groups.get(groupId);
    if (group === undefined) {
      group = { groupId, members: new Set(), local: new Set() };
      this.groups.set(groupId, group);
      for (const member of members) this.addGroupMember(group, member);
    }
    group.local.add(user);
    user.groups?.add(group);
    return group;
  }

  private addGroupMember(group: WatchedGroup, member: string): void {
    if (group.members.has(member)) return;
    group.members.add(member);
    let of = this.groupsOfMember.get(member);
    if (of === undefined) {
      of = new Set();
      this.groupsOfMember.set(member, of);
    }
    of.add(group);
  }

  private removeGroupMember(group: WatchedGroup, member: string): void {
    if (!group.members.delete(member)) return;
    const of = this.groupsOfMember.get(member);
    of?.delete(group);
    if (of?.size === 0) this.groupsOfMember.delete(member);
  }

  private unwatchGroup(user: LocalUser, group: WatchedGroup): void {
    user.groups?.delete(group);
    group.local.delete(user);
    if (group.local.size > 0) return;
    this.groups.delete(group.groupId);
    for (const member of [...group.members]) this.removeGroupMember(group, member);
  }

  private unwatchGroups(user: LocalUser): void {
    if (user.groups !== undefined)
      for (const group of [...user.groups]) this.unwatchGroup(user, group);
    user.groups = undefined;
  }

  /**
   * A group entry for local user `userId`: a membership entry updates the watched members. Only
   * entries with an `event` are parsed (a message's content is escaped JSON, so the raw
   * `"event":` cannot occur in it).
   */
  private onGroupEntry(userId: string, groupId: string, messageJson: string): void {
    if (!messageJson.includes('"event":')) return;
    const user = this.users.get(userId);
    if (user === undefined) return;
    const event = (JSON.parse(messageJson) as { event?: GroupEvent }).event;
    if (event === undefined) return;
    if (user.pendingGroupEvents !== undefined) user.pendingGroupEvents.push([groupId, event]);
    else this.applyGroupEvent(user, groupId, event);
  }

  /**
   * Applies a membership entry that `user` (a local member) received. Every member receives it,
   * so the node's view of a watched group follows each change, in the group's order. A member
   * who joins while online is announced to the local listeners of the group, and a listener who
   * joins (or creates) a group gets the group's online members.
   */
  private applyGroupEvent(user: LocalUser, groupId: string, event: GroupEvent): void {
    const group = this.groups.get(groupId);
    switch (event.kind) {
      case "renamed":
        return;
      case "created":
        // The creator and the members it named: watch it (its members come with the entry).
        if (user.groups !== undefined && (group === undefined || !group.local.has(user)))
          this.joinedGroup(user, this.watchGroup(user, groupId, event.members));
        return;
      case "joined":
        if (group !== undefined && !group.members.has(event.userId)) {
          this.addGroupMember(group, event.userId);
          if (this.online.has(event.userId)) {
            const frame = groupPresenceFrame(groupId, event.userId, "online");
            for (const local of group.local)
              if (local.userId !== event.userId)
                for (const s of local.deltaListeners ?? []) s.send(frame);
          }
        }
        if (event.userId === user.userId && user.groups !== undefined) {
          if (group !== undefined) this.joinedGroup(user, this.watchGroup(user, groupId, []));
          else this.readJoinedGroup(user, groupId);
        }
        return;
      case "removed":
      case "left":
        if (group === undefined) return;
        this.removeGroupMember(group, event.userId);
        if (event.userId === user.userId) this.unwatchGroup(user, group);
        return;
    }
  }

  /** A listener joined a group nobody here watches: reads its members, then watches it. */
  private readJoinedGroup(user: LocalUser, groupId: string): void {
    this.groupStore.get(user.userId, groupId).then(
      (state) => {
        // Released, or removed again, meanwhile: nothing to watch.
        if (this.users.get(user.userId) !== user || user.groups === undefined) return;
        if (!state.members.includes(user.userId)) return;
        this.joinedGroup(user, this.watchGroup(user, groupId, state.members));
      },
      (error: unknown) =>
        this.log.warn(
          { err: error, userId: user.userId, groupId },
          "could not read a joined group; its members' presence shows from the next connection",
        ),
    );
  }

  /** Tells `user`'s listening sessions which members of a group it just joined are online. */
  private joinedGroup(user: LocalUser, group: WatchedGroup): void {
    for (const member of group.members) {
      if (member === user.userId || !this.online.has(member)) continue;
      const frame = groupPresenceFrame(group.groupId, member, "online");
      for (const session of user.deltaListeners ?? []) session.send(frame);
    }
  }

  private async loadContacts(user: LocalUser): Promise<void> {
    let contacts: string[];
    try {
      contacts = await this.messages.contacts(user.userId, CONTACTS_WATCHED);
    } catch (error) {
      user.contactsLoad = undefined; // the next contacts session of the user tries again
      throw error;
    }
    // Released meanwhile: a later session makes a new LocalUser, which reads them again.
    if (this.users.get(user.userId) !== user) return;
    user.contacts = new Set(contacts);
    for (const contact of user.contacts) {
      let watching = this.watchers.get(contact);
      if (watching === undefined) {
        watching = new Set();
        this.watchers.set(contact, watching);
      }
      watching.add(user);
    }
  }

  private unwatch(user: LocalUser): void {
    if (user.contacts === undefined) return;
    for (const contact of user.contacts) {
      const watching = this.watchers.get(contact);
      if (watching === undefined) continue;
      watching.delete(user);
      if (watching.size === 0) this.watchers.delete(contact);
    }
    user.contacts = undefined;
    user.deltaListeners = undefined;
  }

  /**
   * An order of the server API for this user's sessions here: `disconnect` closes them all,
   * `revoke` those whose token was issued before the revocation (or does not say when), with
   * UNAUTHORIZED and 4001, as an expired token.
   */
  private control(userId: string, sessions: ReadonlySet<Session>, event: ControlEvent): void {
    let closed = 0;
    for (const session of [...sessions]) {
      if (session.isClosed) continue;
      if (event.action === "disconnect") {
        session.close(
          (event.code ?? DISCONNECTED_BY_SERVICE) as CloseCode,
          event.reason ?? DISCONNECTED_REASON,
        );
        closed++;
        continue;
      }
      const before = event.before ?? Number.POSITIVE_INFINITY;
      if (session.issuedAt !== undefined && session.issuedAt >= before) continue;
      this.metrics.error(ErrorCode.UNAUTHORIZED);
      session.send(
        errorFrame(ErrorCode.UNAUTHORIZED, "The token was revoked; reconnect with a fresh one."),
      );
      session.close(CloseCode.UNAUTHORIZED, "token revoked");
      closed++;
    }
    this.log.info(
      { userId, action: event.action, closed },
      "closed connections by order of the API",
    );
  }

  private requeue(userId: string, event: MessageEvent): void {
    const message = {
      messageId: event.messageId,
      messageJson: event.messageJson,
      position: event.position,
      ...(event.groupId === undefined ? {} : { groupId: event.groupId }),
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

const RESOLVED = Promise.resolve();
