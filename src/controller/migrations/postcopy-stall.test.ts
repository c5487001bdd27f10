/**
 * Post-copy with the link cut while the destination is being told to run the guest, against fake agents at
 * the wire: that call's answer is held up (as a cut link holds it). Until it comes the stall rule waits — the
 * switch-over may be sending the device state, which breaking the stream would lose — while the loop keeps
 * reading the source; once the destination answers that it runs the guest, a stream that still stands
 * still is recovered (pause, recover, resume), and the job completes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { joinFakeAgent, type FakeAgent } from '../../testing/fake-agent.ts';
import { createController, type Controller } from '../controller.ts';
import { FINAL_STATES } from '../../common/states.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => T | null, ms = 10_000): Promise<T> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(20)) {
    const v = fn();
    if (v !== null) return v;
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('post-copy stalls while the destination\'s answer to "run" is held up: left alone until it answers, then recovered, then completed', { timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-pcstall-'));
  let ctl: Controller | undefined;
  const agents: FakeAgent[] = [];
  let release = (): void => {};
  try {
    ctl = await createController({ dataDir: dir, heartbeats: false, probe: false, vmNetworks: [{ name: 'vm0', cidr: '10.77.0.0/24' }] });
    agents.push(await joinFakeAgent(ctl, 'h1'), await joinFakeAgent(ctl, 'h2'));
    const [h1, h2] = agents as [FakeAgent, FakeAgent];
    await ctl.vms.create({ name: 'v1', memory: '128M', host: 'h1' });
    h1.completeAfterPolls = Number.POSITIVE_INFINITY;
    // The first pass is done at once (post-copy `always` switches), and then nothing moves: the link is cut.
    h1.onPerform = (v) => {
      v.iterations = 2;
      v.transferredBytes = 64 << 20;
      const incoming = h2.migrations.get(v.id);
      if (incoming) incoming.view.postcopyStarted = true;
    };
    h2.finishHeld = new Promise<void>((r) => (release = r));
    const c = ctl;
    const m = await c.migrations.migrate('v1', { to: 'h2', storage: 'shared', postcopy: 'always', stallTimeout: '1s' });
    await until('post-copy', () => (c.migrations.jobs.mustGet(m.id).state === 'postcopy' ? true : null));
    await until('the destination asked to run the guest', () => (h2.calls.some((x) => x === `POST /agent/v1/migrations/${m.id}/finish`) ? true : null));
    // Three stall timeouts with the answer held: nothing breaks the stream, the source is still read.
    const polls = h1.calls.filter((x) => x.endsWith(`/migrations/${m.id}`)).length;
    await sleep(3000);
    const held = c.migrations.jobs.mustGet(m.id);
    assert.equal(held.state, 'postcopy');
    assert.ok(!held.escalations.some((e) => e.step.kind === 'postcopy-recover'), `no recovery before the destination answered: ${JSON.stringify(held.escalations)}`);
    assert.ok(!h1.calls.some((x) => x.endsWith('/postcopy-pause')), 'the stream was not broken');
    assert.ok(h1.calls.filter((x) => x.endsWith(`/migrations/${m.id}`)).length > polls + 5, 'the source still read meanwhile');
    release();
    const recovered = await until('a recovery once the destination runs the guest', () => {
      const j = c.migrations.jobs.mustGet(m.id);
      return j.escalations.some((e) => e.step.kind === 'postcopy-recover') ? j : null;
    });
    assert.equal(recovered.state, 'postcopy', 'not aborted: post-copy cannot be cancelled');
    // The escalation is recorded first, then carried out: the source's stream broken, then resumed.
    const route = (r: string) => `POST /agent/v1/migrations/${m.id}/${r}`;
    await until('the source resumed towards the destination', () => (h1.calls.includes(route('postcopy-resume')) ? true : null));
    assert.ok(h1.calls.indexOf(route('postcopy-pause')) >= 0 && h1.calls.indexOf(route('postcopy-pause')) < h1.calls.indexOf(route('postcopy-resume')), `paused first: ${h1.calls.join(', ')}`);
    assert.ok(h2.calls.includes(route('recover')), 'the destination asked to listen again');
    assert.equal(h2.calls.filter((x) => x === route('finish')).length, 1, 'the held finish was not asked again meanwhile');
    // The link is back: the rest of the pages arrive, the job rolls forward.
    h1.completeAfterPolls = 0;
    const end = await until('the end', () => {
      const j = c.migrations.jobs.mustGet(m.id);
      return FINAL_STATES.includes(j.state) ? j : null;
    });
    assert.equal(end.state, 'completed', JSON.stringify(end.error));
    assert.equal(c.vms.get('v1').host, 'h2');
  } finally {
    release();
    await ctl?.close();
    for (const a of agents) await a.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
