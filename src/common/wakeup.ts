/**
 * A sleep that something else may cut short: the loops that poll (an agent reading QEMU, the controller
 * reading an agent, an events route waiting for a change) sleep on one, and whoever learns of news first
 * (a QMP event, an agent's event stream, a change of stage) fires it. The poll stays the fallback.
 */
export class Wakeup {
  readonly #sleepers = new Set<() => void>();
  #missed = false;

  /** Wakes every sleeper now; with none asleep, the next sleep returns at once (the news is not lost). */
  fire(): void {
    if (this.#sleepers.size === 0) {
      this.#missed = true;
      return;
    }
    for (const wake of [...this.#sleepers]) wake();
  }

  /** Sleeps `ms`, or less when fire() comes first (or came while nobody slept). */
  sleep(ms: number): Promise<void> {
    if (this.#missed) {
      this.#missed = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#sleepers.add(done);
    });
  }
}
