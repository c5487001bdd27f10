/**
 * The agent's fence against deposed leaders: the newest leader term it has seen on a request
 * (TERM_HEADER), kept in its data dir across restarts, and the refusal of any request with an older term.
 * A newer term is written to disk before the request that carries it runs, so an agent that restarts
 * still refuses the older leader.
 */
import { existsSync, readFileSync } from 'node:fs';
import { open, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { TERM_HEADER } from '../common/agent-routes.ts';
import { FerryError } from '../common/errors.ts';

const TERM_FILE = 'leader-term.json';

function parseTerm(raw: string | string[] | undefined): number {
  if (raw === undefined) return 0;
  const s = Array.isArray(raw) ? raw[0] : raw;
  if (s === undefined || !/^[0-9]{1,15}$/.test(s)) {
    throw new FerryError('FERRY_E_BAD_INPUT', `${TERM_HEADER} must be a whole number, not ${JSON.stringify(raw)}.`);
  }
  return Number(s);
}

export class TermFence {
  private newest = 0;
  private writing: Promise<void> = Promise.resolve();

  /** Without a data dir the fence lives in memory only (the fake agent of unit tests). */
  constructor(private readonly dataDir?: string) {
    const file = dataDir === undefined ? undefined : join(dataDir, TERM_FILE);
    if (file !== undefined && existsSync(file)) {
      const v = (JSON.parse(readFileSync(file, 'utf8')) as { term?: unknown }).term;
      if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) this.newest = v;
    }
  }

  /** The newest term seen so far. */
  get term(): number {
    return this.newest;
  }

  /** Admits a request carrying `raw` (the header's value), or throws FERRY_E_STALE_TERM. */
  async admit(raw: string | string[] | undefined): Promise<void> {
    const term = parseTerm(raw);
    if (term < this.newest) {
      throw new FerryError(
        'FERRY_E_STALE_TERM',
        `This agent has taken orders from a leader of term ${this.newest}; a request of term ${term} comes from a deposed controller and is refused.`,
        { details: { newestTerm: this.newest, requestTerm: term } },
      );
    }
    if (term === this.newest) return;
    this.newest = term;
    const dir = this.dataDir;
    if (dir === undefined) return;
    // Writes are chained so that a slower write of an older term never lands after a newer one.
    const write = this.writing.then(async () => {
      const term = this.newest;
      const tmp = join(dir, `${TERM_FILE}.tmp`);
      const f = await open(tmp, 'w', 0o600);
      try {
        await f.writeFile(JSON.stringify({ term }));
        await f.sync();
      } finally {
        await f.close();
      }
      await rename(tmp, join(dir, TERM_FILE));
    });
    this.writing = write.catch(() => undefined);
    await write;
  }
}
