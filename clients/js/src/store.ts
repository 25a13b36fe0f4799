/** A value a UI renders from: read it with `get()`, hear of each change with `subscribe()`. */
export interface Store<T> {
  get(): T;
  /** Calls `listener` with the current value at once, then after each change. */
  subscribe(listener: (value: T) => void): () => void;
}

export class Writable<T> implements Store<T> {
  private value: T;
  private readonly listeners = new Set<(value: T) => void>();

  constructor(value: T) {
    this.value = value;
  }

  get(): T {
    return this.value;
  }

  set(value: T): void {
    this.value = value;
    for (const listener of [...this.listeners]) {
      try {
        listener(value);
      } catch (error) {
        // One failing view must not keep the others stale.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  subscribe(listener: (value: T) => void): () => void {
    this.listeners.add(listener);
    listener(this.value);
    return () => this.listeners.delete(listener);
  }
}
