import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  capabilityList,
  destinationParameters,
  negotiateCapabilities,
  NO_CAPABILITIES,
  sourceParameters,
  symmetricMismatch,
  UNLIMITED_BANDWIDTH,
  validateCapabilities,
} from './capabilities.ts';
import { tlsAuthzObject } from './tls.ts';

const MiB = 1024 * 1024;

test('both sides set the stream-changing switches; only the source sets auto-converge and events', () => {
  const caps = { postcopy: true, multifd: 2, xbzrle: false, autoConverge: true };
  assert.deepEqual(capabilityList(caps, 'destination'), [
    { capability: 'postcopy-ram', state: true },
    { capability: 'multifd', state: true },
    { capability: 'xbzrle', state: false },
  ]);
  const src = capabilityList(caps, 'source');
  assert.deepEqual(src.slice(0, 3), capabilityList(caps, 'destination'));
  assert.deepEqual(src.slice(3), [
    { capability: 'auto-converge', state: true },
    { capability: 'events', state: true },
  ]);
  assert.deepEqual(symmetricMismatch(caps, { ...caps, autoConverge: false }), []);
  assert.deepEqual(symmetricMismatch(caps, { ...caps, multifd: 4, xbzrle: true }), ['multifd', 'xbzrle']);
});

test('negotiation: a capability turned on that QEMU lacks is refused; one turned off is dropped', () => {
  const wanted = capabilityList({ ...NO_CAPABILITIES, xbzrle: true }, 'source');
  const old = ['xbzrle', 'auto-converge', 'events', 'postcopy-ram']; // no multifd
  assert.deepEqual(
    negotiateCapabilities(wanted, old).map((c) => c.capability),
    ['postcopy-ram', 'xbzrle', 'auto-converge', 'events'],
  );
  assert.throws(() => negotiateCapabilities(capabilityList({ ...NO_CAPABILITIES, multifd: 2 }, 'source'), old), {
    code: 'FERRY_E_CPU_INCOMPATIBLE',
  });
});

test('source parameters: 0 lifts QEMU’s 128 MiB/s cap; TLS set or explicitly cleared; xbzrle cache a power of two', () => {
  const p = sourceParameters({ ...NO_CAPABILITIES, xbzrle: true, multifd: 3 }, { bandwidthBytesPerSec: 0, downtimeLimitMs: 30 }, { credsId: 't', hostname: '10.0.0.2' }, 1000 * MiB);
  assert.equal(p['max-bandwidth'], UNLIMITED_BANDWIDTH);
  assert.equal(p['downtime-limit'], 30);
  assert.equal(p['multifd-channels'], 3);
  assert.equal(p['xbzrle-cache-size'], 128 * MiB);
  assert.equal(p['tls-creds'], 't');
  assert.equal(p['tls-hostname'], '10.0.0.2');
  const plain = sourceParameters(NO_CAPABILITIES, { bandwidthBytesPerSec: 5 * MiB, downtimeLimitMs: 300 }, null, 256 * MiB);
  assert.equal(plain['max-bandwidth'], 5 * MiB);
  assert.equal(plain['tls-creds'], '');
  assert.equal(plain['xbzrle-cache-size'], undefined);
  assert.throws(() => sourceParameters(NO_CAPABILITIES, { bandwidthBytesPerSec: -1, downtimeLimitMs: 300 }, null, 1), { code: 'FERRY_E_BAD_INPUT' });
  assert.throws(() => sourceParameters(NO_CAPABILITIES, { bandwidthBytesPerSec: 0, downtimeLimitMs: 0.5 }, null, 1), { code: 'FERRY_E_BAD_INPUT' });
  assert.deepEqual(destinationParameters({ ...NO_CAPABILITIES, multifd: 2 }, { credsId: 's' }), { 'tls-creds': 's', 'multifd-channels': 2 });
  // The destination admits only the source the controller named (src/agent/migration/tls.ts).
  assert.deepEqual(destinationParameters(NO_CAPABILITIES, { credsId: 's', authzId: 'ferry-tls-peer' }), { 'tls-creds': 's', 'tls-authz': 'ferry-tls-peer' });
  assert.deepEqual(tlsAuthzObject('h1'), { 'qom-type': 'authz-simple', id: 'ferry-tls-peer', identity: 'CN=h1' });
  assert.throws(() => tlsAuthzObject('CN=x,O=y'), { code: 'FERRY_E_BAD_NAME' });
});

test('capabilities from a request body are validated', () => {
  assert.deepEqual(validateCapabilities(undefined), NO_CAPABILITIES);
  assert.deepEqual(validateCapabilities({ postcopy: true }), { ...NO_CAPABILITIES, postcopy: true });
  assert.throws(() => validateCapabilities({ postcopy: 'yes' }), { code: 'FERRY_E_BAD_INPUT' });
  assert.throws(() => validateCapabilities({ multifd: 17 }), { code: 'FERRY_E_BAD_INPUT' });
});
