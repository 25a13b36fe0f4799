/**
 * Where a client keeps its state between runs: its outbox, cursors, conversations and
 * lists. Values are JSON-compatible. Implement this over any key-value store (a React
 * Native app over AsyncStorage or MMKV, see docs/sdk.md); every method may be async.
 */
export interface Storage {
  get(key: string): Promise<unknown>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
  keys(): Promise<string[]>;
  /** Removes every key: `signOut()` and a change of person end here. */
  clear(): Promise<void>;
}

/** The default: kept in this process only; a new client on the same instance finds it. */
export class MemoryStorage implements Storage {
  private readonly data = new Map<string, string>();

  async get(key: string): Promise<unknown> {
    const text = this.data.get(key);
    return text === undefined ? undefined : JSON.parse(text);
  }

  async set(key: string, value: unknown): Promise<void> {
    // Stored as JSON, as a real store would: no object is shared with the caller.
    this.data.set(key, JSON.stringify(value));
  }

  async delete(key: string): Promise<void> {
    this.data.delete(key);
  }

  async keys(): Promise<string[]> {
    return [...this.data.keys()];
  }

  async clear(): Promise<void> {
    this.data.clear();
  }
}

/** A browser's IndexedDB: survives reloads and restarts of the browser. */
export class IndexedDBStorage implements Storage {
  private readonly opening: Promise<IDBDatabase>;

  constructor(name = "hub-client", private readonly table = "state") {
    this.opening = new Promise((resolve, reject) => {
      const request = indexedDB.open(name, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(table);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }

  private async run<T>(mode: IDBTransactionMode, work: (table: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const db = await this.opening;
    return new Promise((resolve, reject) => {
      const transaction = db.transaction(this.table, mode);
      const request = work(transaction.objectStore(this.table));
      // Resolved once the transaction commits, not when the request succeeds: a page
      // unloaded in between would lose the write.
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  }

  async get(key: string): Promise<unknown> {
    return this.run("readonly", (table) => table.get(key));
  }

  async set(key: string, value: unknown): Promise<void> {
    await this.run("readwrite", (table) => table.put(value, key));
  }

  async delete(key: string): Promise<void> {
    await this.run("readwrite", (table) => table.delete(key));
  }

  async keys(): Promise<string[]> {
    return (await this.run("readonly", (table) => table.getAllKeys())).map(String);
  }

  async clear(): Promise<void> {
    await this.run("readwrite", (table) => table.clear());
  }
}
