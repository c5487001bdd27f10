/**
 * What deploy/ ships: the systemd units pass `systemd-analyze verify`, and the example config files are
 * what `ferry server --config` and `ferry agent --config` accept.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { loadConfigFile } from '../common/config-file.ts';
import { AGENT_CONFIG_KEYS, agentOptions, migrationAddressIn, parseProtocolFlag } from './commands/agent.ts';
import { SERVER_CONFIG_KEYS, serverOptions } from './commands/server.ts';
import { FerryError } from '../common/errors.ts';

const DEPLOY = join(PACKAGE_ROOT, 'deploy');
const hasSystemdAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

test('the systemd units pass systemd-analyze verify', { skip: hasSystemdAnalyze ? false : 'systemd-analyze is not installed (apt-get install systemd)' }, () => {
  const out = execFileSync('systemd-analyze', ['verify', join(DEPLOY, 'ferry-server.service'), join(DEPLOY, 'ferry-agent.service')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  assert.equal(out.trim(), '');
});

test("the example config files hold only their command's keys", () => {
  const server = loadConfigFile(join(DEPLOY, 'server.yaml'), SERVER_CONFIG_KEYS);
  assert.deepEqual(server.vmNetwork, ['vm0=10.77.0.0/24']);
  assert.deepEqual(server.san, ['ferry.example.org']);
  const agent = loadConfigFile(join(DEPLOY, 'agent.yaml'), AGENT_CONFIG_KEYS);
  assert.equal(agent.migrationCidr, '10.0.1.0/24');
  assert.equal(agent.migrationPorts, '49152-49215');
});

function withFile(text: string, fn: (file: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-cfg-'));
  try {
    const file = join(dir, 'c.yaml');
    writeFileSync(file, text);
    fn(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (err) {
    return err instanceof FerryError ? `${err.code} ${String(err.details?.key ?? '')}`.trim() : String(err);
  }
  return 'no error';
};

test('config files: an unknown key, a wrong type or a non-mapping is refused, naming the key', () => {
  withFile('listen: 1.2.3.4:7443\nmigrationPort: 1-2\n', (f) => assert.equal(code(() => loadConfigFile(f, AGENT_CONFIG_KEYS)), 'FERRY_E_CONFIG_KEY migrationPort'));
  withFile('name: [a, b]\n', (f) => assert.equal(code(() => loadConfigFile(f, AGENT_CONFIG_KEYS)), 'FERRY_E_CONFIG_KEY name'));
  withFile('- a\n- b\n', (f) => assert.equal(code(() => loadConfigFile(f, AGENT_CONFIG_KEYS)), 'FERRY_E_CONFIG_FILE'));
  withFile('a: [\n', (f) => assert.equal(code(() => loadConfigFile(f, AGENT_CONFIG_KEYS)), 'FERRY_E_CONFIG_FILE'));
  assert.equal(code(() => loadConfigFile('/nonexistent/ferry.yaml', AGENT_CONFIG_KEYS)), 'FERRY_E_CONFIG_FILE');
  // A single value where a list is expected is a list of one.
  withFile('san: ferry.example.org\n', (f) => assert.deepEqual(loadConfigFile(f, SERVER_CONFIG_KEYS).san, ['ferry.example.org']));
  // An operator's own certificate for the API, as --tls-cert/--tls-key.
  withFile('tlsCert: /etc/ferry/tls/server.crt\ntlsKey: /etc/ferry/tls/server.key\n', (f) => {
    const v = loadConfigFile(f, SERVER_CONFIG_KEYS);
    assert.deepEqual([v.tlsCert, v.tlsKey], ['/etc/ferry/tls/server.crt', '/etc/ferry/tls/server.key']);
  });
});

test('config files: flags win over keys, key by key', () => {
  withFile('name: from-file\nlisten: 10.0.0.1:7443\nmigrationPorts: 50000-50010\n', (config) => {
    const { opts, fromFlag } = agentOptions({ config, name: 'from-flag' });
    assert.equal(opts.name, 'from-flag');
    assert.equal(opts.listen, '10.0.0.1:7443');
    assert.equal(opts.migrationPorts, '50000-50010');
    assert.ok(fromFlag('name'));
    assert.ok(!fromFlag('listen'));
  });
  withFile('vmNetwork: [vm0=10.1.0.0/24]\nsan: [a.example]\n', (config) => {
    assert.deepEqual(serverOptions({ config, san: [], vmNetwork: [], showToken: true }).opts.vmNetwork, ['vm0=10.1.0.0/24']);
    assert.deepEqual(serverOptions({ config, san: ['b.example'], vmNetwork: [], showToken: true }).opts.san, ['b.example']);
  });
});

test('the migration address is the one in the migration CIDR; none there is FERRY_E_NO_MIGRATION_ADDRESS', () => {
  assert.equal(migrationAddressIn('10.0.1.0/24', ['192.168.1.5', '10.0.1.7']), '10.0.1.7');
  assert.equal(code(() => migrationAddressIn('10.0.2.0/24', ['10.0.1.7'])), 'FERRY_E_NO_MIGRATION_ADDRESS');
  assert.equal(code(() => migrationAddressIn('10.0.2.0/33', ['10.0.1.7'])), 'FERRY_E_USAGE');
});

test('--protocol plays the previous version, nothing older or newer', () => {
  assert.deepEqual(parseProtocolFlag('2'), { current: 2, min: 1 });
  assert.deepEqual(parseProtocolFlag('3'), { current: 3, min: 2 });
  for (const bad of ['1', '4', 'x', '']) assert.equal(code(() => parseProtocolFlag(bad)), 'FERRY_E_USAGE');
});
