/**
 * Broker on Redis pub/sub, over the engine's dedicated subscriber connection.
 *
 * - `<p>user:<userId>`: one channel per user, subscribed while the user has a connection on this
 *   node. Message events are published by the append script (scripts.ts), receipt frames by the
 *   acknowledge and mark-read scripts, other frames (typing) by publishFrame; payloads as in
 *   codec.ts. A direct message is one PUBLISH to the recipient's channel (plus one to the
 *   sender's when it has other connections): it reaches only the nodes that hold the user,
 *   never all nodes.
 * - `<p>node:<nodeId>`: this node's channel, subscribed at start (standalone Redis). A group's
 *   entry or frame comes here once for all of this node's members it is for (codec.ts), so a
 *   message to a group costs one PUBLISH per node that holds members, not one per member; the
 *   same connection carries the user channels, so a user's direct and group events keep the
 *   order in which the scripts published them.
 * - `<p>broadcast`: presence deltas (codec.ts), published by the presence scripts; every node
 *   subscribes to it at start and keeps its copy of the online set from them (PresenceMirror),
 *   which calls the handler's onPresence for each change.
 *
 * subscribe() resolves when Redis has confirmed the subscription (ioredis resolves SUBSCRIBE on
 * the server's confirmation), so every event published after that reaches this node; one
 * connection delivers a channel's messages in publish order. After a reconnect the broker
 * subscribes again to every channel it holds (resubscribe(), called by the engine; the engine
 * reports healthy only once Redis confirmed them; test/outage.test.ts checks both). Not ioredis'
 * autoResubscribe: it sends the re-subscribe without handling its failure, so a connection lost
 * again before the confirmation made an unhandled rejection, which ends a Node process, and the
 * channels were not subscribed on the next reconnect either.
 *
 * publishFrame is one PUBLISH on the command connection (a connection in subscriber mode cannot
 * publish): at most once, to whichever nodes hold the user at that moment, nothing stored.
 *
 * On Redis Cluster every channel is a sharded one (SSUBSCRIBE, SPUBLISH, `smessage`): a user's
 * channel lives in the user's slot (keys.ts), so an event goes to the one shard that owns it and
 * to the nodes subscribed there, never to every node of the cluster as a classic PUBLISH does
 * (Redis Cluster copies those over its bus to every node). The presence broadcast channel is in
 * the `{p}` slot: each presence delta is one SPUBLISH on that shard, sent to each app node once.
 * ioredis (shardedSubscribers) keeps one subscriber connection per shard and subscribes again
 * where a slot moves (failover, resharding).
 */
import type { Broker, BrokerHandler, ControlEvent } from "@mrezhen/engine";
import { Cluster } from "ioredis";
import {
  decodeNodeEvent,
  decodePresenceDelta,
  decodeUserEvent,
  encodeControlEvent,
  encodeFrameEvent,
} from "./codec.js";
import type { Logger } from "./engine.js";
import type { Keys } from "./keys.js";
import { PresenceMirror } from "./presence-mirror.js";
import { coalesceWrites, type RedisClient, toEngineError } from "./script-runner.js";

/** Channels per SUBSCRIBE when re-subscribing after a reconnect. */
const RESUBSCRIBE_BATCH = 1000;

export class RedisBroker implements Broker {
  private handler: BrokerHandler | undefined;
  /**
   * The channels this node holds on a standalone Redis (confirmed, not unsubscribed since): what
   * resubscribe() restores. On Redis Cluster ioredis restores its sharded subscriptions itself.
   */
  private readonly channels = new Set<string>();
  /**
   * Users whose UNSUBSCRIBE failed (connection down): ioredis would subscribe to them again on
   * reconnect, so they are unsubscribed once the connection is back, unless wanted again.
   */
  private readonly staleUsers = new Set<string>();
  private warnedUndecodable = false;
  private warnedUndecodableDelta = false;
  /** This node's copy of the online set, kept from the broadcast channel's deltas. */
  readonly mirror: PresenceMirror;

  constructor(
    private readonly subscriber: RedisClient,
    /** The engine's command connection, for publishFrame and presence snapshots. */
    private readonly command: RedisClient,
    private readonly keys: Keys,
    private readonly logger: Logger,
  ) {
    // Without a handler yet the mirror is kept all the same; there is just nobody to tell.
    this.mirror = new PresenceMirror(command, keys, logger, (change) =>
      this.handler?.onPresence(change),
    );
  }

  /** Subscribes a channel: sharded on Redis Cluster (resolves on Redis' confirmation). */
  async listen(channel: string): Promise<void> {
    const { subscriber } = this;
    if (subscriber instanceof Cluster) {
      await subscriber.ssubscribe(channel);
    } else {
      await subscriber.subscribe(channel);
      this.channels.add(channel);
    }
  }

  /**
   * Subscribes again to every channel this node holds, after the standalone subscriber
   * reconnected (a new connection has no subscriptions); resolves once Redis confirmed them all.
   * A failure (the connection lost again) rejects, and the next reconnect tries again.
   */
  async resubscribe(): Promise<void> {
    const { subscriber } = this;
    if (subscriber instanceof Cluster || this.channels.size === 0) return;
    coalesceWrites(subscriber);
    const channels = [...this.channels];
    const batches: Promise<unknown>[] = [];
    for (let start = 0; start < channels.length; start += RESUBSCRIBE_BATCH) {
      batches.push(subscriber.subscribe(...channels.slice(start, start + RESUBSCRIBE_BATCH)));
    }
    await Promise.all(batches);
  }

  /** PUBLISH, or SPUBLISH on Redis Cluster (the channel's shard only). */
  private async publish(channel: string, payload: string): Promise<void> {
    const { command } = this;
    if (command instanceof Cluster) await command.spublish(channel, payload);
    else await command.publish(channel, payload);
  }

  private async unlisten(channel: string): Promise<void> {
    const { subscriber } = this;
    if (subscriber instanceof Cluster) {
      await subscriber.sunsubscribe(channel);
    } else {
      // Not wanted any more, whether or not Redis hears of it now (see staleUsers).
      this.channels.delete(channel);
      await subscriber.unsubscribe(channel);
    }
  }

  setHandler(handler: BrokerHandler): void {
    this.handler = handler;
  }

  async subscribe(userId: string): Promise<void> {
    this.staleUsers.delete(userId);
    coalesceWrites(this.subscriber); // the subscriptions of one tick leave in one write
    try {
      await this.listen(this.keys.userChannel(userId));
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async unsubscribe(userId: string): Promise<void> {
    coalesceWrites(this.subscriber);
    try {
      await this.unlisten(this.keys.userChannel(userId));
    } catch (error) {
      this.staleUsers.add(userId);
      throw toEngineError(error);
    }
  }

  async publishFrame(userId: string, frame: string): Promise<void> {
    try {
      await this.publish(this.keys.userChannel(userId), encodeFrameEvent(frame));
    } catch (error) {
      throw toEngineError(error);
    }
  }

  async publishControl(userId: string, event: ControlEvent): Promise<void> {
    try {
      await this.publish(this.keys.userChannel(userId), encodeControlEvent(event));
    } catch (error) {
      throw toEngineError(error);
    }
  }

  /** Retries the unsubscribes that failed during an outage (after the subscriber reconnected). */
  async dropStale(): Promise<void> {
    for (const userId of [...this.staleUsers]) {
      this.staleUsers.delete(userId);
      await this.unsubscribe(userId);
    }
  }

  /** The subscriber connection's `message` listener. Never throws into ioredis. */
  readonly dispatch = (channel: string, payload: string): void => {
    try {
      if (channel === this.keys.broadcastChannel) {
        const delta = decodePresenceDelta(payload);
        if (delta !== undefined) {
          this.mirror.receive(delta);
        } else if (!this.warnedUndecodableDelta) {
          // An older or newer node's payload (rolling upgrade): skip it.
          this.warnedUndecodableDelta = true;
          this.logger.warn({ channel }, "ignoring a broadcast this version cannot decode");
        }
        return;
      }
      const handler = this.handler;
      if (handler === undefined) return;
      if (channel === this.keys.thisNodeChannel) {
        const delivered = decodeNodeEvent(payload, (userId, event) =>
          handler.onUserEvent(userId, event),
        );
        if (!delivered && !this.warnedUndecodable) {
          this.warnedUndecodable = true;
          this.logger.warn({ channel }, "ignoring a node event this version cannot decode");
        }
        return;
      }
      const userId = this.keys.userOfChannel(channel);
      if (userId === undefined) return;
      const event = decodeUserEvent(payload);
      if (event !== undefined) {
        handler.onUserEvent(userId, event);
      } else if (!this.warnedUndecodable) {
        // A newer node publishing a kind this one does not know (rolling upgrade): skip it.
        this.warnedUndecodable = true;
        this.logger.warn({ channel }, "ignoring a user event this version cannot decode");
      }
    } catch (error) {
      this.logger.error({ err: error, channel }, "broker handler threw");
    }
  };
}
