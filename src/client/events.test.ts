import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { FerryEventJson } from '../common/events.ts';
import { eventMatches } from './events.ts';

const ev = (type: string, subject: string, data: Record<string, unknown> = {}): FerryEventJson => ({ seq: 1, at: '2026-01-01T00:00:00.000Z', type, subject, data });

test('--type matches a type exactly or as a dotted prefix, --vm the VM and its migrations', () => {
  const progress = ev('migration.progress', 'm-1', { vm: 'web1' });
  assert.ok(eventMatches(progress, {}));
  assert.ok(eventMatches(progress, { types: ['migration'] }));
  assert.ok(eventMatches(progress, { types: ['migration.'] }));
  assert.ok(eventMatches(progress, { types: ['vm', 'migration.progress'] }));
  assert.ok(!eventMatches(progress, { types: ['migration.prog'] }), 'a prefix ends at a dot');
  assert.ok(!eventMatches(progress, { types: ['vm'] }));
  assert.ok(eventMatches(progress, { vm: 'web1' }));
  assert.ok(!eventMatches(progress, { vm: 'web2' }));
  assert.ok(eventMatches(ev('vm.state', 'web1', { host: 'h1' }), { vm: 'web1', types: ['vm'] }));
  assert.ok(!eventMatches(ev('host.ready', 'web1'), { vm: 'web1' }), 'a host that happens to share the name is not the VM');
});
