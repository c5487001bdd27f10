/**
 * One operation per key at a time (the agent's per-VM mutex): a stop racing a delete, or two creates of
 * one name, would otherwise interleave QMP commands and file operations on the same VM. Waiters run in
 * arrival order; a failed operation releases the key like a successful one.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  /** Whether an operation on `key` is running or queued. */
  busy(key: string): boolean {
    return this.tails.has(key);
  }

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      // Only the last in line clears the key, so the map holds nothing for idle VMs.
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
