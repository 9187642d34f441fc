/**
 * A test fixture, not shipped: a Worker whose Durable Object hosts
 * `SqliteStore` over its own storage (`durableSqlite`, as the chat's rooms
 * do), driven over one WebSocket per store so the HistoryStore contract can
 * run against real Durable Object SQL storage from vitest on Node.
 *
 * Calls arrive in order on the socket and start in that order (an append
 * joins the store's batch synchronously, as in-process), while their answers
 * come back whenever their promises settle, so batching behaves as it does
 * inside the chat's object.
 */
import type { DurableObjectNamespace, DurableObjectState } from "@cloudflare/workers-types/index.ts";
import type { ChatMessage } from "../../src/protocol.ts";
import { durableSqlite } from "../../src/store/durable.ts";
import { SqliteStore } from "../../src/store/sqlite.ts";
import { type FixtureCall, routeToObject, serveCalls } from "./fixture.ts";

interface Env {
  STORES: DurableObjectNamespace;
}

/** One call: `gen` names the store instance (a reopen makes the next one). */
export type StoreCall = FixtureCall<
  | "append"
  | "latest"
  | "before"
  | "since"
  | "after"
  | "sinceFirst"
  | "get"
  | "edit"
  | "delete"
  | "ban"
  | "unban"
  | "bannedUntil"
  | "lastId"
  | "flush"
  | "close"
  | "reopen"
  | "prune"
  | "now"
>;

export class StoreHost {
  readonly #ctx: DurableObjectState;
  /** Store instances by generation, all over this object's storage. */
  readonly #stores = new Map<number, SqliteStore>();
  #open: () => SqliteStore = () => {
    throw new Error("not connected");
  };
  #setClock: (ms: number | null) => void = () => {};

  constructor(ctx: DurableObjectState) {
    this.#ctx = ctx;
  }

  fetch(request: Request): Response {
    const params = new URL(request.url).searchParams;
    const limit = Number(params.get("limit") ?? "10000");
    const ttlMs = Number(params.get("ttlMs") ?? "0");
    // The contract's fake clock: `now` calls set it (JSON cannot carry a function).
    let clock: number | null = null;
    this.#open = () =>
      new SqliteStore(durableSqlite(this.#ctx.storage), limit, {
        ttlMs,
        now: () => clock ?? Date.now(),
        pruneTimer: false,
      });
    this.#setClock = (ms) => {
      clock = ms;
    };
    this.#stores.set(0, this.#open());
    return serveCalls<StoreCall>((call) => this.#call(call));
  }

  #call(call: StoreCall): unknown {
    if (call.method === "now") return this.#setClock(call.args[0] as number | null);
    const store = this.#stores.get(call.gen);
    if (!store) throw new Error(`no store generation ${call.gen}`);
    const [a, b, c, d] = call.args;
    switch (call.method) {
      case "append":
        return store.append(a as ChatMessage);
      case "latest":
        return store.latest(a as string, b as number);
      case "before":
        return store.before(a as string, b as string, c as number);
      case "since":
        return store.since(a as string, b as string, c as number);
      case "sinceFirst":
        return store.sinceFirst(a as string, b as string, c as number, d as number);
      case "after":
        return store.after(a as string, b as string, c as number);
      case "get":
        return store.get(a as string, b as string);
      case "edit":
        return store.edit(a as string, b as string, c as string, d as number);
      case "delete":
        return store.delete(a as string, b as string);
      case "ban":
        return store.ban(a as string, b as string, c as number | null);
      case "unban":
        return store.unban(a as string, b as string);
      case "bannedUntil":
        // JSON has no Infinity: a ban until lifted travels as the string.
        return store.bannedUntil(a as string, b as string, c as number).then((v) => (v === Infinity ? "Infinity" : v));
      case "prune":
        return store.prune();
      case "lastId":
        return store.lastId(a as string);
      case "flush":
        return store.flush();
      case "close":
        return store.close();
      case "reopen":
        return store.close().then(() => {
          const gen = call.gen + 1;
          this.#stores.set(gen, this.#open());
          return gen;
        });
    }
  }
}

export default {
  fetch(request: Request, env: Env): Response | Promise<Response> {
    return routeToObject(request, env.STORES, "/store");
  },
};
