import type { ClientCommandType } from "./frames.js";

/**
 * Every command type a client may send, at run time (ClientCommandType is the same list as a
 * type): for what must enumerate them, such as the check that docs/asyncapi.yaml documents each
 * one. The assertions below make the compiler refuse a list that misses or invents one.
 */
export const CLIENT_COMMAND_TYPES = [
  "direct_message",
  "get_history",
  "get_online_users",
  "ping",
  "ack",
  "sync",
  "mark_read",
  "typing",
  "get_conversations",
  "refresh",
  "create_group",
  "add_member",
  "remove_member",
  "leave_group",
  "rename_group",
  "get_groups",
  "group_message",
  "get_read_by",
] as const satisfies readonly ClientCommandType[];

type Listed = (typeof CLIENT_COMMAND_TYPES)[number];
/** Compiles only while every ClientCommandType is listed. */
const everyTypeListed: [Exclude<ClientCommandType, Listed>] extends [never] ? true : never = true;
void everyTypeListed;
