/**
 * Where the client keeps what must outlive a page or process: the outbox (messages not yet
 * acked) and the inbox cursor (the last position the app processed). Values are strings; either
 * method may be synchronous or return a promise.
 *
 * @example
 * // Survives a page reload: the outbox is resent and the inbox resumes where it stopped.
 * new MrezhenClient({ url, getToken, storage: webStorage(localStorage) });
 */
export interface ClientStorage {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
}

/**
 * Storage in a Map: what a client without `storage` uses (nothing survives the process). Share one
 * between two clients to simulate a restart in tests.
 *
 * @example
 * const storage = memoryStorage();
 * new MrezhenClient({ url, getToken, storage });
 */
export function memoryStorage(map: Map<string, string> = new Map()): ClientStorage {
  return { get: (key) => map.get(key), set: (key, value) => void map.set(key, value) };
}

/** The part of the Web Storage API the adapter uses (`localStorage`, `sessionStorage`). */
export interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/**
 * A browser adapter over `localStorage` (or `sessionStorage`): synchronous, so what was sent just
 * before a reload is already saved when the page goes. A full or forbidden storage (private
 * mode) loses persistence, never the send.
 *
 * @example
 * new MrezhenClient({ url, getToken, storage: webStorage(localStorage) });
 */
export function webStorage(store: WebStorageLike): ClientStorage {
  return {
    get: (key) => store.getItem(key),
    set: (key, value) => {
      try {
        store.setItem(key, value);
      } catch {
        // QuotaExceededError or SecurityError: keep working in memory.
      }
    },
  };
}
