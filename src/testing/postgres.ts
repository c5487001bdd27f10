/**
 * A throwaway PostgreSQL server for tests: Debian's own binaries (`initdb`, `pg_ctl`), a cluster in a
 * temporary directory, its Unix socket there too, TCP on 127.0.0.1 at a free port, trust authentication
 * for the one role `ferry`, durability off (a test's data dies with it). initdb refuses to run as root, so
 * when the test runs as root the server runs as Debian's `postgres` user, which owns the directory.
 */
import { execFile } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after } from 'node:test';

const run = promisify(execFile);

export interface PostgresServer {
  /** `postgres://ferry@127.0.0.1:PORT/ferry` */
  readonly url: string;
  readonly port: number;
  readonly dir: string;
  /** A fresh, empty database on this server, and its URL (one per test, so tests do not see each other's rows). */
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

function pgBin(name: string): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) if (existsSync(join(root, v, 'bin', name))) return join(root, v, 'bin', name);
  throw new Error(`No ${name} under ${root}: install Debian's postgresql (bash scripts/setup.sh does).`);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a !== null ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

export async function startPostgres(): Promise<PostgresServer> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-pg-'));
  const asRoot = process.getuid?.() === 0;
  // Run as `postgres` when root: `runuser` keeps the environment small and needs no password.
  const as = (bin: string, args: string[]): Promise<unknown> =>
    asRoot ? run('runuser', ['-u', 'postgres', '--', bin, ...args]) : run(bin, args);
  if (asRoot) {
    const { stdout } = await run('id', ['-u', 'postgres']);
    const { stdout: gid } = await run('id', ['-g', 'postgres']);
    chownSync(dir, Number(stdout.trim()), Number(gid.trim()));
  }
  const data = join(dir, 'data');
  const port = await freePort();
  await as(pgBin('initdb'), ['-D', data, '-U', 'ferry', '--auth=trust', '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync']);
  const options = [`-p ${port}`, `-k ${dir}`, `-c listen_addresses=127.0.0.1`, '-c fsync=off', '-c synchronous_commit=off', '-c full_page_writes=off'].join(' ');
  try {
    await as(pgBin('pg_ctl'), ['-D', data, '-l', join(dir, 'server.log'), '-o', options, '-w', '-t', '60', 'start']);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const url = (db: string): string => `postgres://ferry@127.0.0.1:${port}/${db}`;
  const psql = (db: string, command: string): Promise<unknown> =>
    run(pgBin('psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', dir, '-p', String(port), '-U', 'ferry', '-d', db, '-c', command]);
  await psql('postgres', 'CREATE DATABASE ferry');
  let stopped = false;
  return {
    url: url('ferry'),
    port,
    dir,
    createDatabase: async (name) => {
      if (!/^[a-z][a-z0-9_]{0,62}$/.test(name)) throw new Error(`bad database name ${name}`);
      await psql('postgres', `CREATE DATABASE ${name}`);
      return url(name);
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      try {
        await as(pgBin('pg_ctl'), ['-D', data, '-m', 'immediate', '-w', '-t', '30', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** A store a controller test runs on: the data dir's SQLite file (`location` undefined) or a fresh PostgreSQL database. */
export interface StoreUnderTest {
  readonly label: 'SQLite' | 'PostgreSQL';
  /** `--store` for one controller (or several sharing it): undefined for the data dir's SQLite file. */
  location(): Promise<string | undefined>;
}

let shared: Promise<PostgresServer> | undefined;
let databases = 0;

/**
 * The two stores, for a test file that runs its controller tests on both: the same test twice. One
 * PostgreSQL server per test file, started at its first use and stopped when the file's tests end.
 */
export function storesUnderTest(): StoreUnderTest[] {
  after(async () => {
    const server = shared;
    shared = undefined;
    if (server !== undefined) await (await server).stop();
  });
  return [
    { label: 'SQLite', location: () => Promise.resolve(undefined) },
    {
      label: 'PostgreSQL',
      location: async () => {
        shared ??= startPostgres();
        return (await shared).createDatabase(`ferry_test_${++databases}`);
      },
    },
  ];
}
