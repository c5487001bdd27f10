/**
 * Which VMs have an operation in flight in this controller, and when each was last changed by one.
 * Heartbeat reconciliation consults it so that it never "corrects" the store from an agent report
 * that was fetched before (or during) a create, delete, start or stop of the same VM.
 */
import { FerryError } from '../common/errors.ts';

export class VmGuard {
  private readonly busy = new Map<string, string>();
  private readonly changedAt = new Map<string, number>();

  /** Runs `fn` as the only operation on `name`; a second one meanwhile gets FERRY_E_VM_STATE. */
  async exclusive<T>(name: string, op: string, fn: () => Promise<T>): Promise<T> {
    const other = this.busy.get(name);
    if (other !== undefined) {
      throw new FerryError('FERRY_E_VM_STATE', `VM ${name} has an operation in progress (${other}): wait for it.`, { details: { operation: other } });
    }
    this.busy.set(name, op);
    try {
      return await fn();
    } finally {
      this.busy.delete(name);
      this.changedAt.set(name, performance.now());
    }
  }

  /** True when a report fetched at `fetchedAt` (performance.now()) must not be applied to `name`. */
  skip(name: string, fetchedAt: number): boolean {
    if (this.busy.has(name)) return true;
    const t = this.changedAt.get(name);
    return t !== undefined && t >= fetchedAt;
  }

  isBusy(name: string): boolean {
    return this.busy.has(name);
  }
}
