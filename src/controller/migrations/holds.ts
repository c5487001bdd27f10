/**
 * Hold points: named places in a migration where a test's fault injector can stop the controller, do
 * something to the world (kill a process, cut a link) and let it go on — deterministically, with no sleep.
 * Off unless the controller is started with `FERRY_TEST_HOLD_DIR` (ControllerOptions.holdDir); production
 * never sets it, and then every hold is a no-op.
 *
 * The protocol is files in that directory, so that a test in another process can drive it:
 *   `hold-<point>`            exists: every job that reaches <point> stops there
 *   `<job>.<point>.reached`   written by the controller when a job stopped at <point> (JSON {at})
 *   `<job>.<point>.go`        written by the test: that job goes on (so does removing `hold-<point>`)
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Where the controller can be held, in the order a live migration reaches them:
 * - `prepare`: the destination QEMU waits for the stream (prepared), perform was not called yet;
 * - `switchover`: the source QEMU reported `completed`, finish was not called yet;
 * - `finish`: the destination runs the guest (finish succeeded), confirm was not called yet;
 * - `confirm`: the source let go (confirm succeeded), the job is not marked completed yet.
 * Pre-copy and post-copy need no hold: a test sees them in the job's state and figures.
 */
export const HOLD_POINTS = ['prepare', 'switchover', 'finish', 'confirm'] as const;
export type HoldPoint = (typeof HOLD_POINTS)[number];

/** A hold never lasts longer than this: a test that died must not wedge a controller for ever. */
export const MAX_HOLD_MS = 10 * 60_000;

/** The files of the protocol above: the one a test writes to hold `point`, and a held job's two. */
export const holdPath = (dir: string, point: HoldPoint): string => join(dir, `hold-${point}`);
export const reachedPath = (dir: string, job: string, point: HoldPoint): string => join(dir, `${job}.${point}.reached`);
export const goPath = (dir: string, job: string, point: HoldPoint): string => join(dir, `${job}.${point}.go`);

export const isHoldPoint = (p: string): p is HoldPoint => (HOLD_POINTS as readonly string[]).includes(p);

/** Stops here while the test holds `point`; returns at once when holds are off or the point is not held. */
export async function holdAt(dir: string | undefined, job: string, point: HoldPoint, stopped: () => boolean = () => false): Promise<void> {
  if (dir === undefined) return;
  const hold = holdPath(dir, point);
  if (!existsSync(hold)) return;
  await writeFile(reachedPath(dir, job, point), JSON.stringify({ at: new Date().toISOString() }) + '\n');
  const go = goPath(dir, job, point);
  const deadline = Date.now() + MAX_HOLD_MS;
  while (existsSync(hold) && !existsSync(go) && !stopped() && Date.now() < deadline) await sleep(25);
}
