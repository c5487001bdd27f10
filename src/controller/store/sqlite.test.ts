import { after } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { storeContract } from './contract.case.ts';

const dir = mkdtempSync(join(tmpdir(), 'ferry-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
storeContract('SQLite', { location: () => Promise.resolve(`sqlite:${join(dir, `s${++n}.db`)}`) });
