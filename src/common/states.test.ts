import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ACTIVE_STATES, AWAITING_STATES, FINAL_STATES, MIGRATION_STATES, TRANSITIONS, canTransition, type MigrationState } from './states.ts';

test('final states have no way out; every other state can fail or be cancelled', () => {
  for (const s of FINAL_STATES) assert.deepEqual(TRANSITIONS[s], []);
  for (const s of MIGRATION_STATES.filter((x) => !FINAL_STATES.includes(x))) {
    assert.ok(canTransition(s, 'failed') || canTransition(s, 'cancelled'), s);
  }
  assert.equal(canTransition('postcopy', 'cancelled'), false, 'after post-copy starts the source is gone');
  assert.equal(canTransition('completed', 'failed'), false);
});

test('every state appears in the diagram of the module comment (a new state cannot go unnoticed)', () => {
  const src = readFileSync(new URL('./states.ts', import.meta.url), 'utf8');
  const diagram = src.slice(src.indexOf('stateDiagram-v2'), src.indexOf('```\n'));
  for (const s of MIGRATION_STATES) assert.match(diagram, new RegExp(`\\b${s}\\b`), s);
  for (const [from, tos] of Object.entries(TRANSITIONS)) {
    for (const to of tos) {
      assert.ok(diagram.includes(`${from} --> ${to}`), `${from} --> ${to} missing from the diagram`);
    }
  }
  // …and the reverse: every edge drawn is an edge of the table, so the picture cannot promise more.
  for (const m of diagram.matchAll(/^ \*\s+(\w+) --> (\w+)$/gm)) {
    const [from, to] = [m[1]!, m[2]!] as [MigrationState, MigrationState];
    assert.ok(canTransition(from, to), `${from} --> ${to} is drawn but not allowed`);
  }
});

test('a job waiting for an agent is active (one per VM) and can end either way', () => {
  for (const s of AWAITING_STATES) {
    assert.ok(ACTIVE_STATES.includes(s), s);
    assert.ok(canTransition(s, 'switching') || canTransition(s, 'postcopy'), `${s} can roll forward`);
    assert.ok(canTransition(s, 'failed'), `${s} can roll back`);
  }
});
