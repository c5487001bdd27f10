/**
 * A real distribution, as an operator brings one (issue #9): `ferry image build debian-12` (Debian's own
 * packages: systemd, cloud-init, qemu-guest-agent), imported into the server's store, booted in a
 * two-host lab through SeaBIOS and GRUB from a qcow2 overlay, configured by a NoCloud seed (its address,
 * hostname, an SSH key and a user-data file that installs a small key-value service). A client on the VM
 * network (the lab's side of it, in the root namespace) keeps one TCP connection and sends a request every
 * 20 ms, checking every answer, while the VM is moved live h1 → h2 with its disk copied over TLS, live
 * h2 → h1 over plain TCP, then cold (saved and restored). After each move exactly one QEMU runs it (asked of /proc on every
 * host); the guest agent's boot id is the same across all three moves; the connection survives them; what
 * the client was told was stored is there at the end; `e2fsck -n` of the disk after a clean shutdown
 * finds nothing. The same system booted by direct kernel boot (its own kernel and initrd, a bare ext4
 * root without a partition table) is moved live with its disk copied and keeps serving. Bad input —
 * user-data over 1 MiB, a file that is no SSH key — exits 2 and creates nothing.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { MigrationJson } from '../../src/common/migration.ts';
import type { VmSpec } from '../../src/common/spec.ts';
import type { DebianManifest } from '../../src/guest/debian.ts';
import { askKv, KV_PORT as PORT } from '../../src/guest/kv.ts';
import { readLabState } from '../../src/lab/index.ts';
import { PACKAGE_ROOT } from '../../src/common/paths.ts';
import { LabHarness, waitFor } from './helpers.ts';

const h = new LabHarness('d');
const USER_DATA = join(PACKAGE_ROOT, 'guest', 'kv-user-data.yaml');
/** A Debian boot with cloud-init under TCG on a busy 2-core machine: ~1–5 min. */
const BOOT_TIMEOUT = '15m';

/** `vm create … --wait-ready`: the CLI waits as long as the guest may take. */
async function createReady(args: string[]): Promise<VmDoc> {
  const r = await h.ferry([...args, '--wait-ready', '--ready-timeout', BOOT_TIMEOUT, '--json'], 20 * 60_000);
  assert.equal(r.code, 0, `ferry ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout) as VmDoc;
}
/**
 * What a request may wait beyond the guest's measured pause: a segment lost in the pause is sent again
 * after TCP's retransmission timeout (200 ms at least, doubling).
 */
const TCP_RETRY_ALLOWANCE_MS = 3_000;

interface VmDoc {
  name: string;
  host: string;
  state: string;
  ready: boolean;
  bootId: string | null;
  ip: string | null;
  spec: VmSpec;
}

/**
 * One client of the key-value service: a request at a time on one connection, a new connection only when
 * the old one broke. Every answer is checked against what the client itself stored.
 */
class KvClient {
  readonly stored = new Map<string, string>();
  wrong: string[] = [];
  answered = 0;
  reconnects = 0;
  /** Longest wait for an answer (ms) since the last `window()`. */
  maxWaitMs = 0;
  #stop = false;
  #socket: Socket | null = null;
  #n = 0;
  #loop: Promise<void> | null = null;

  constructor(
    private readonly ip: string,
    private readonly tag: string,
  ) {}

  start(): void {
    this.#loop = this.#run();
  }

  /** Returns the longest wait since the last call and starts a new window. */
  window(): number {
    const w = this.maxWaitMs;
    this.maxWaitMs = 0;
    return w;
  }

  async stop(): Promise<void> {
    this.#stop = true;
    this.#socket?.destroy();
    await this.#loop;
  }

  #connect(): Promise<{ socket: Socket; lines: AsyncIterator<string> }> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: this.ip, port: PORT });
      socket.setNoDelay(true);
      socket.setTimeout(5_000, () => socket.destroy(new Error('connect timeout')));
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.setTimeout(0);
        socket.removeListener('error', reject);
        let buf = '';
        const queue: string[] = [];
        let wake: (() => void) | null = null;
        let ended = false;
        socket.on('data', (d: Buffer) => {
          buf += d.toString();
          let i;
          while ((i = buf.indexOf('\n')) >= 0) {
            queue.push(buf.slice(0, i));
            buf = buf.slice(i + 1);
          }
          wake?.();
        });
        const end = (): void => {
          ended = true;
          wake?.();
        };
        socket.on('close', end);
        socket.on('error', end);
        const lines: AsyncIterator<string> = {
          next: async () => {
            while (queue.length === 0 && !ended) await new Promise<void>((r) => (wake = r));
            wake = null;
            const v = queue.shift();
            return v === undefined ? { done: true, value: undefined } : { done: false, value: v };
          },
        };
        resolve({ socket, lines });
      });
    });
  }

  async #run(): Promise<void> {
    let conn: { socket: Socket; lines: AsyncIterator<string> } | null = null;
    let pending: { line: string; expect: string; since: number } | null = null;
    while (!this.#stop) {
      if (conn === null) {
        try {
          conn = await this.#connect();
          this.#socket = conn.socket;
        } catch {
          await new Promise((r) => setTimeout(r, 200));
          continue;
        }
      }
      if (pending === null) {
        const n = this.#n++;
        if (n % 2 === 0) {
          const k = `${this.tag}${n}`;
          const v = `v${n}-${Date.now()}`;
          pending = { line: `SET ${k} ${v}`, expect: `OK ${k}`, since: Date.now() };
          this.stored.set(k, v); // counted as stored only once answered, see below
        } else {
          const k = `${this.tag}${n - 1}`;
          pending = { line: `GET ${k}`, expect: `VAL ${k} ${this.stored.get(k)}`, since: Date.now() };
        }
      }
      conn.socket.write(`${pending.line}\n`);
      const got = await conn.lines.next();
      if (got.done) {
        conn.socket.destroy();
        conn = null;
        if (!this.#stop) this.reconnects++;
        continue; // the same request again, its wait still counted from its first send
      }
      if (got.value !== pending.expect) this.wrong.push(`${pending.line} → ${got.value} (expected ${pending.expect})`);
      this.answered++;
      this.maxWaitMs = Math.max(this.maxWaitMs, Date.now() - pending.since);
      pending = null;
      await new Promise((r) => setTimeout(r, 20));
    }
    conn?.socket.destroy();
  }
}

/** One request on a fresh connection (for checks after the client stopped). */
const ask = (ip: string, line: string): Promise<string> => askKv(ip, line);

async function serving(ip: string, timeoutMs: number): Promise<void> {
  await waitFor(`the key-value service at ${ip}:${PORT}`, async () => (await ask(ip, 'GET ping').catch(() => '')).startsWith('NONE'), timeoutMs, 1_000);
}

describe('a Debian 12 guest from `ferry image build debian-12`, moved live and cold', { timeout: 45 * 60_000 }, () => {
  let manifest: DebianManifest;
  const measured: string[] = [];
  const key = join(h.root, 'id_test.pub');

  before(async () => {
    const t0 = Date.now();
    // A first build (mmdebstrap from the machine's mirror) takes minutes; a reused one seconds.
    const b = await h.ferry(['image', 'build', 'debian-12', '--json'], 30 * 60_000);
    assert.equal(b.code, 0, `image build failed:\n${b.stdout}\n${b.stderr}`);
    const built = JSON.parse(b.stdout) as DebianManifest;
    manifest = built;
    measured.push(`image build debian-12: ${Math.round((Date.now() - t0) / 1000)} s (the build itself took ${built.buildSeconds} s when it was made)`);
    const up = await h.ferry(['lab', 'up', '--hosts', '2', '--name', h.lab, '--json'], 180_000);
    assert.equal(up.code, 0, `lab up failed:\n${up.stdout}\n${up.stderr}`);
    h.state = readLabState({ name: h.lab, dataRoot: h.dataRoot });
    const imported = await h.ferryJson<{ imported: { name: string; sha256: string }[] }>(['image', 'build', 'debian-12', '--import']);
    assert.deepEqual(imported.imported.map((i) => [i.name, i.sha256]), [['debian-12', manifest.disk.sha256], ['debian-12-rootfs', manifest.rootfs.sha256]]);
    // Any well-formed key: the guest installs it for its default user (cloud-init's public-keys).
    writeFileSync(key, 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEnvvQ2c0WcE0cZkqy5e3f9l7sR5Lq6bJmE3h3b6yQ1z ferry-test\n');
  });

  after(() => h.down(measured));

  it('refuses bad seed input with exit 2 and creates nothing', async () => {
    const big = join(h.root, 'big-user-data');
    writeFileSync(big, `#cloud-config\n# ${'x'.repeat(1024 * 1024)}\n`);
    const notKey = join(h.root, 'not-a-key');
    writeFileSync(notKey, 'hello world\n');
    for (const [args, code] of [
      [['--user-data', big], 'FERRY_E_USER_DATA_TOO_LARGE'],
      [['--ssh-key', notKey], 'FERRY_E_BAD_SSH_KEY'],
      [['--image', 'debian-13'], 'FERRY_E_IMAGE_NOT_FOUND'],
    ] as const) {
      const r = await h.ferry(['vm', 'create', 'bad0', '--image', 'debian-12', ...args, '--host', 'h1', '--json']);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.equal((JSON.parse(r.stdout) as { error: { code: string } }).error.code, code, args.join(' '));
    }
    assert.deepEqual(await h.ferryJson<VmDoc[]>(['vm', 'list']), []);
    rmSync(big);
  });

  it('boots from disk with its seed, serves, and keeps serving through two live moves and a cold one', async () => {
    const t0 = Date.now();
    const v = await createReady(['vm', 'create', 'deb1', '--image', 'debian-12', '--memory', '512M', '--host', 'h1', '--user-data', USER_DATA, '--ssh-key', key]);
    assert.deepEqual([v.state, v.ready, v.spec.boot.kind, v.spec.cloudInit?.hostname], ['running', true, 'disk', 'deb1']);
    assert.ok(v.ip !== null && v.bootId !== null, 'an address and a boot id from the guest agent');
    const ip = v.ip;
    await serving(ip, 10 * 60_000);
    measured.push(`debian disk boot: create → guest agent ready → service answering in ${Math.round((Date.now() - t0) / 1000)} s`);
    const client = new KvClient(ip, 'a');
    client.start();
    try {
      await waitFor('the client to get answers', async () => client.answered > 20, 30_000, 100);
      client.window();
      const live = async (to: string, extra: string[]): Promise<MigrationJson> => {
        const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', 'deb1', '--to', to, '--storage', 'copy', ...extra, '--wait'], [0, 1]);
        assert.equal(m.state, 'completed', JSON.stringify(m.error));
        const waited = client.window();
        const pause = Math.max(m.downtimeMs ?? 0, m.guestDowntimeMs ?? 0);
        measured.push(`debian live → ${to} ${extra.join(' ') || '(TLS)'}: total ${m.totalMs} ms, QEMU downtime ${m.downtimeMs} ms, guest downtime ${m.guestDowntimeMs} ms (${m.guestDowntimeProbe}), disk ${m.progress?.disk?.transferredBytes ?? 0} bytes, longest client wait ${waited} ms`);
        assert.ok(waited <= pause + TCP_RETRY_ALLOWANCE_MS, `no request waited much longer than the pause: ${waited} ms vs ${pause} ms`);
        assert.ok(m.progress?.disk !== undefined && m.progress.disk !== null, 'the disk was copied');
        // Measured from the VM network's side by ICMP echo (the guest has no ferry-guest to answer UDP).
        assert.equal(m.guestDowntimeProbe, 'icmp');
        assert.ok(m.guestDowntimeMs !== null && m.guestDowntimeMs > 0 && m.guestDowntimeMs <= (m.totalMs ?? Infinity), `guest downtime ${m.guestDowntimeMs} ms`);
        assert.equal(m.policy.tls, !extra.includes('--no-tls'));
        return m;
      };
      const exactlyOne = (host: string): void => {
        const other = host === 'h1' ? 'h2' : 'h1';
        assert.equal(h.qemuPids(host, 'deb1').length, 1, `one QEMU on ${host}`);
        assert.equal(h.qemuPids(other, 'deb1').length, 0, `none on ${other}`);
      };
      const first = await live('h2', []);
      exactlyOne('h2');
      // h2 had no copy of the base: it fetched it (sha256 checked) before prepare; only the overlay moved.
      assert.deepEqual(first.images.map((i) => [i.name, i.action]), [['debian-12', 'fetched']]);
      const a = await h.ferryJson<VmDoc>(['vm', 'show', 'deb1']);
      assert.deepEqual([a.host, a.bootId], ['h2', v.bootId], 'the guest agent on h2 reports the same boot id');
      const back = await live('h1', ['--no-tls']);
      exactlyOne('h1');
      assert.deepEqual(back.images.map((i) => [i.name, i.action]), [['debian-12', 'present']]);
      const b = await h.ferryJson<VmDoc>(['vm', 'show', 'deb1']);
      assert.deepEqual([b.host, b.bootId], ['h1', v.bootId]);
      assert.equal(client.reconnects, 0, 'the TCP connection survived both live moves');

      const cold = await h.ferryJson<MigrationJson>(['vm', 'migrate', 'deb1', '--to', 'h2', '--mode', 'cold', '--wait'], [0, 1]);
      assert.equal(cold.state, 'completed', JSON.stringify(cold.error));
      exactlyOne('h2');
      await serving(ip, 10 * 60_000);
      await waitFor('the client to be answered after the cold move', async () => {
        const n = client.answered;
        await new Promise((r) => setTimeout(r, 500));
        return client.answered > n;
      }, 60_000, 100);
      measured.push(`debian cold → h2: total ${cold.totalMs} ms, pause ${cold.downtimeMs} ms, client reconnects ${client.reconnects}`);
    } finally {
      await client.stop();
    }
    assert.deepEqual(client.wrong, [], 'no answer was wrong');
    assert.ok(client.answered > 100, `the client kept being answered (${client.answered} answers)`);
    // Everything the service acknowledged is on the disk that moved three times.
    let checked = 0;
    for (const [k, val] of client.stored) {
      const got = await ask(ip, `GET ${k}`);
      if (got.startsWith('NONE') && k === [...client.stored.keys()].at(-1)) continue; // the last SET may not have been answered
      assert.equal(got, `VAL ${k} ${val}`);
      checked++;
    }
    measured.push(`debian: ${client.answered} answers, ${checked} stored keys read back after the moves`);
    const c = await h.ferryJson<VmDoc>(['vm', 'show', 'deb1']);
    assert.equal(c.host, 'h2');
    // A running VM moves cold by save and restore: the same boot, memory and all.
    assert.equal(c.bootId, v.bootId, 'the cold move restored the same boot');

    // A clean shutdown, then the filesystem as e2fsck sees it (read-only): nothing to fix.
    await h.ferryJson(['vm', 'stop', 'deb1', '--timeout', '120s']);
    const overlay = join(h.hostDir('h2'), 'vms', 'deb1', 'vda.qcow2');
    const raw = join(h.root, 'deb1.raw');
    const part = join(h.root, 'deb1-part.raw');
    execFileSync('qemu-img', ['convert', '-q', '-O', 'raw', overlay, raw]);
    execFileSync('dd', [`if=${raw}`, `of=${part}`, 'bs=1M', 'skip=1', 'conv=sparse', 'status=none']);
    rmSync(raw);
    const fsck = execFileSync('e2fsck', ['-f', '-n', part], { encoding: 'utf8' });
    assert.match(fsck, /clean|files/, fsck);
    rmSync(part);
    await h.ferryJson(['vm', 'delete', 'deb1']);
  });

  it('direct kernel boot of the same system (bare ext4 root) is moved live with its disk and keeps serving', async () => {
    const t0 = Date.now();
    const v = await createReady(['vm', 'create', 'deb2', '--image', 'debian-12-rootfs', '--kernel', manifest.kernel.path, '--initrd', manifest.initrd.path, '--append', manifest.directAppend, '--memory', '512M', '--host', 'h1', '--user-data', USER_DATA]);
    assert.deepEqual([v.state, v.ready, v.spec.boot.kind], ['running', true, 'direct']);
    assert.ok(v.ip !== null);
    await serving(v.ip, 10 * 60_000);
    measured.push(`debian direct kernel boot: create → service answering in ${Math.round((Date.now() - t0) / 1000)} s`);
    assert.equal(await ask(v.ip, 'SET before-move 1'), 'OK before-move');
    const m = await h.ferryJson<MigrationJson>(['vm', 'migrate', 'deb2', '--to', 'h2', '--storage', 'copy', '--wait'], [0, 1]);
    assert.equal(m.state, 'completed', JSON.stringify(m.error));
    measured.push(`debian direct live → h2: total ${m.totalMs} ms, QEMU downtime ${m.downtimeMs} ms, guest downtime ${m.guestDowntimeMs} ms`);
    assert.equal(m.guestDowntimeProbe, 'icmp');
    assert.ok(m.guestDowntimeMs !== null && m.guestDowntimeMs > 0, `guest downtime ${m.guestDowntimeMs} ms`);
    assert.equal(h.qemuPids('h2', 'deb2').length, 1);
    assert.equal(h.qemuPids('h1', 'deb2').length, 0);
    assert.equal(await ask(v.ip, 'GET before-move'), 'VAL before-move 1');
    const after2 = await h.ferryJson<VmDoc>(['vm', 'show', 'deb2']);
    assert.deepEqual([after2.host, after2.bootId], ['h2', v.bootId]);
    await h.ferryJson(['vm', 'delete', 'deb2']);
  });
});
