/**
 * The raw-QMP baseline of `ferry bench`: the same tiny guest, in the same lab host namespaces and over the
 * same migration links as Ferry's VM, but started and migrated by hand with Ferry's own QMP client (no
 * controller, no agent, no TLS, no policy) — what a careful script driving QEMU directly would do. One
 * second guest beside Ferry's, hopping between the same two hosts; its memory is verified over its guest
 * channel after every hop and its gap measured with the same UDP probe as Ferry's.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { FerryError } from '../common/errors.ts';
import type { VmSpec } from '../common/spec.ts';
import { qemuBinary } from '../qemu/accel.ts';
import { buildQemuArgv, type Accel } from '../qemu/argv.ts';
import { runFiles } from '../qemu/process.ts';
import { QmpClient } from '../qemu/qmp.ts';
import { GuestChannel, type GuestReply } from '../guest/client.ts';
import { resolveImage } from '../guest/image.ts';
import { UdpProbe } from '../guest/udp-probe.ts';
import { thinSamples, type RemainingSample } from './samples.ts';

const run = promisify(execFile);
/** How often the remaining memory is sampled during a raw migration (as often as Ferry's progress is read). */
const SAMPLE_MS = 50;

/** What a raw variant changes from QEMU's defaults (nothing set = QEMU 10's 128 MiB/s cap, 300 ms limit). */
export interface RawQmpSettings {
  /** `max-bandwidth` in bytes/s. */
  maxBandwidth?: number;
  /** `downtime-limit` in ms. */
  downtimeLimitMs?: number;
}

/** "Cap lifted": QEMU has no "unlimited"; 16 GiB/s is far beyond what one stream does on any host here. */
export const RAW_UNCAPPED = 16 * 1024 ** 3;

/** Asks a guest that was just started for `info` until its tool answers, for at most `ms`. */
export async function untilGuestAnswers(command: (line: string) => Promise<GuestReply>, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      await command('info');
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(500);
    }
  }
}

export interface RawHost {
  name: string;
  namespace: string;
  /** Migration address inside the namespace. */
  address: string;
}

export interface RawFigures {
  totalMs: number;
  qemuTotalMs: number | null;
  downtimeMs: number | null;
  guestDowntimeMs: number | null;
  transferredBytes: number | null;
  iterations: number | null;
  /** Memory still to send over time (query-migrate), when the tool lets it be sampled. */
  remaining?: RemainingSample[];
}

interface RawQemu {
  host: RawHost;
  pid: number;
  qmp: QmpClient;
  runDir: string;
}

const TAP = 'rawtap0';

/** Runs a command inside a lab host's namespace (iproute2, never a shell). */
async function inNs(ns: string, argv: string[]): Promise<void> {
  await run('ip', ['netns', 'exec', ns, ...argv]);
}

export class RawQmpGuest {
  readonly #dir: string;
  readonly #spec: VmSpec;
  readonly #accel: Accel;
  readonly #ip: string;
  #current: RawQemu | null = null;
  readonly #started = new Set<number>();
  #port = 49_000 + Math.floor(Math.random() * 1000);

  /**
   * `ferrySpec` is the spec of Ferry's own bench VM: same machine, CPU model, memory and image. The raw guest
   * gets its own name, MAC and address on the VM LAN (`ipCidr`).
   */
  constructor(opts: { dir: string; ferrySpec: VmSpec; accel: Accel; ipCidr: string; network: string }) {
    this.#dir = opts.dir;
    this.#accel = opts.accel;
    this.#ip = opts.ipCidr.split('/')[0]!;
    this.#spec = {
      ...opts.ferrySpec,
      name: 'rawqmp1',
      disks: [],
      nics: [{ id: 'net0', mac: '52:54:00:fb:00:01', network: opts.network, ip: opts.ipCidr }],
      guestChannel: true,
      guestAgent: false,
    };
    delete (this.#spec as { cloudInit?: unknown }).cloudInit;
  }

  get host(): string | null {
    return this.#current?.host.name ?? null;
  }

  /** A tap on each host's VM bridge, as the agent makes for its guests. */
  async prepareHosts(hosts: readonly (RawHost & { vmBridge: string })[]): Promise<void> {
    for (const h of hosts) {
      await run('ip', ['-n', h.namespace, 'tuntap', 'add', TAP, 'mode', 'tap']).catch(() => undefined);
      await run('ip', ['-n', h.namespace, 'link', 'set', TAP, 'master', h.vmBridge]);
      await run('ip', ['-n', h.namespace, 'link', 'set', TAP, 'up']);
    }
  }

  async #launch(host: RawHost, incoming: boolean): Promise<RawQemu> {
    const runDir = join(this.#dir, `${host.name}-${Date.now()}`);
    mkdirSync(runDir, { recursive: true, mode: 0o700 });
    const files = runFiles(runDir);
    const paths = {
      ...files,
      disks: {},
      taps: { net0: TAP },
      ...(this.#spec.boot.kind === 'kernel' ? await resolveImage(this.#spec.boot.image) : {}),
    };
    // Without `-S`: a hand-driven destination runs the guest (and announces it) as soon as the stream ends;
    // holding it paused until a controller decides is Ferry's own cost, which the baseline must not carry.
    const argv = buildQemuArgv(this.#spec, paths, {
      accel: this.#accel,
      ...(incoming ? { incoming: 'defer' as const } : {}),
    }).filter((a) => a !== '-S');
    const errFd = openSync(files.stderr, 'a', 0o600);
    // `ip netns exec` execs QEMU in place: the child's pid is QEMU's.
    const child = spawn('ip', ['netns', 'exec', host.namespace, qemuBinary(), ...argv], {
      detached: true,
      stdio: ['ignore', errFd, errFd],
      cwd: runDir,
    });
    closeSync(errFd);
    child.unref();
    if (child.pid === undefined) throw new FerryError('FERRY_E_QEMU_START', 'Raw QMP baseline: QEMU did not start.');
    this.#started.add(child.pid);
    const qmp = await QmpClient.connect(files.qmpSocket, { timeoutMs: 15_000 });
    return { host, pid: child.pid, qmp, runDir };
  }

  /** Boots the guest on `host` and waits until its tool answers. */
  async boot(host: RawHost): Promise<void> {
    this.#current = await this.#launch(host, false);
    await untilGuestAnswers((line) => this.command(line));
  }

  /** One guest tool command over the guest channel of wherever the guest runs now. */
  async command(line: string, timeoutMs = 30_000): Promise<GuestReply> {
    if (this.#current === null) throw new FerryError('FERRY_E_INTERNAL', 'Raw QMP guest not booted.');
    const ch = await GuestChannel.connect(runFiles(this.#current.runDir).guestSocket, { timeoutMs: 5000 });
    try {
      return await ch.command(line, { timeoutMs, raw: true });
    } finally {
      await ch.close();
    }
  }

  /**
   * One live migration to `to`, timed from starting the destination QEMU to the source QEMU gone: start the
   * destination (`-incoming defer`, not paused: it runs the guest by itself once the stream is in),
   * `migrate-incoming`, set the variant's parameters, `migrate`, wait for the source's MIGRATION event
   * `completed`, `quit` the source.
   */
  async migrate(to: RawHost, settings: RawQmpSettings): Promise<RawFigures> {
    const src = this.#current;
    if (src === null) throw new FerryError('FERRY_E_INTERNAL', 'Raw QMP guest not booted.');
    const probe = new UdpProbe({ ip: this.#ip });
    await probe.start();
    const t0 = performance.now();
    let dst: RawQemu | null = null;
    try {
      dst = await this.#launch(to, true);
      const uri = `tcp:${to.address}:${this.#port++}`;
      await dst.qmp.executeRaw('migrate-incoming', { uri });
      const params: Record<string, unknown> = {};
      if (settings.maxBandwidth !== undefined) params['max-bandwidth'] = settings.maxBandwidth;
      if (settings.downtimeLimitMs !== undefined) params['downtime-limit'] = settings.downtimeLimitMs;
      if (Object.keys(params).length > 0) await src.qmp.executeRaw('migrate-set-parameters', params);
      // QEMU sends MIGRATION events only with the `events` capability; it changes nothing else.
      await src.qmp.executeRaw('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
      const events = src.qmp.events({ signal: AbortSignal.timeout(180_000) });
      await src.qmp.executeRaw('migrate', { uri });
      // What is left to send, sampled beside the events as Ferry's progress is (the chart of remaining memory).
      const remaining: RemainingSample[] = [];
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const i = (await src.qmp.executeRaw('query-migrate').catch(() => null)) as { ram?: { remaining?: number } } | null;
          if (typeof i?.ram?.remaining === 'number') remaining.push({ tMs: Math.round(performance.now() - t0), bytes: i.ram.remaining });
          await sleep(SAMPLE_MS);
        }
      })();
      let status = '';
      try {
        for await (const ev of events) {
          if (ev.event !== 'MIGRATION') continue;
          status = String((ev.data as { status?: unknown } | undefined)?.status ?? '');
          if (status === 'completed' || status === 'failed' || status === 'cancelled') break;
        }
      } finally {
        sampling = false;
        await sampler;
      }
      await events.return?.();
      remaining.push({ tMs: Math.round(performance.now() - t0), bytes: 0 });
      if (status !== 'completed') throw new FerryError('FERRY_E_MIGRATION_FAILED', `Raw QMP migration ended ${status}.`);
      const info = (await src.qmp.executeRaw('query-migrate')) as {
        'total-time'?: number;
        downtime?: number;
        ram?: { transferred?: number; 'dirty-sync-count'?: number };
      };
      // As Ferry's finish does: the switch learns the guest's new port now, not at the guest's next frame.
      await dst.qmp.executeRaw('announce-self', { initial: 0, max: 100, rounds: 3, step: 50 }).catch(() => undefined);
      await src.qmp.executeRaw('quit').catch(() => undefined);
      await src.qmp.closed.catch(() => undefined);
      this.#started.delete(src.pid);
      const totalMs = Math.round(performance.now() - t0);
      this.#current = dst;
      dst = null;
      // Let the probe see the guest answer again from its new host before it is stopped.
      await sleep(300);
      const report = await probe.stop();
      await rm(src.runDir, { recursive: true, force: true });
      return {
        totalMs,
        qemuTotalMs: info['total-time'] ?? null,
        downtimeMs: info.downtime ?? null,
        guestDowntimeMs: report.longestGapMs,
        transferredBytes: info.ram?.transferred ?? null,
        iterations: info.ram?.['dirty-sync-count'] ?? null,
        remaining: thinSamples(remaining),
      };
    } catch (err) {
      await probe.stop().catch(() => undefined);
      if (dst !== null) this.#kill(dst.pid);
      throw err;
    }
  }

  #kill(pid: number): void {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
    this.#started.delete(pid);
  }

  /** Kills every QEMU this baseline started (only those: by the PIDs it spawned). */
  async close(hosts: readonly RawHost[]): Promise<void> {
    for (const pid of this.#started) this.#kill(pid);
    await this.#current?.qmp.close().catch(() => undefined);
    this.#current = null;
    for (const h of hosts) await inNs(h.namespace, ['ip', 'link', 'del', TAP]).catch(() => undefined);
  }
}
