/**
 * The command line's conventions, in-process (main() with stdout and stderr captured) and, for the shell
 * completion, through bash itself: bad input exits 2 with a stable code before any config is read; output
 * formats; VM files (flags win over the file; unknown keys refused); the create fields and the API's create
 * body stay one list.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { CreateVm } from '../controller/api/schemas.ts';
import { PACKAGE_ROOT } from '../common/paths.ts';
import { defaultVmSpec, MIB } from '../common/spec.ts';
import type { VmJson } from '../common/api.ts';
import { buildProgram, main } from './main.ts';
import { CREATE_FIELDS, createBody, exactSize, vmManifest } from './commands/vm.ts';
import { bashCompletion } from './completion.ts';

interface Captured {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI in this process with no cluster configured. */
async function ferry(...args: string[]): Promise<Captured> {
  const out: string[] = [];
  const err: string[] = [];
  const w1 = process.stdout.write.bind(process.stdout);
  const w2 = process.stderr.write.bind(process.stderr);
  const saved = { config: process.env.FERRY_CONFIG, exitCode: process.exitCode };
  process.env.FERRY_CONFIG = join(tmpdir(), 'ferry-cli-test-no-such-config.json');
  process.exitCode = undefined;
  process.stdout.write = ((s: string) => out.push(String(s)) > 0) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => err.push(String(s)) > 0) as typeof process.stderr.write;
  try {
    const code = await main(['node', 'ferry', ...args]);
    return { code, stdout: out.join(''), stderr: err.join('') };
  } finally {
    process.stdout.write = w1;
    process.stderr.write = w2;
    process.exitCode = saved.exitCode;
    if (saved.config === undefined) delete process.env.FERRY_CONFIG;
    else process.env.FERRY_CONFIG = saved.config;
  }
}

const errorCode = (r: Captured): string => (JSON.parse(r.stdout) as { error: { code: string } }).error.code;

test('a bare number where it is ambiguous exits 2 FERRY_E_UNIT_REQUIRED, before any config is needed', async () => {
  for (const args of [
    ['vm', 'migrate', 'a', '--deadline', '600'],
    ['vm', 'migrate', 'a', '--max-downtime', '300'],
    ['vm', 'migrate', 'a', '--stall-timeout', '10'],
    ['vm', 'migrate', 'a', '--bandwidth', '100'],
    ['vm', 'create', 'a', '--memory', '256'],
    ['vm', 'create', 'a', '--disk', '1024'],
    ['vm', 'create', 'a', '--ready-timeout', '90'],
    ['host', 'drain', 'h1', '--deadline', '5'],
  ]) {
    const r = await ferry(...args, '-o', 'json');
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
    assert.equal(errorCode(r), 'FERRY_E_UNIT_REQUIRED', args.join(' '));
  }
  // With units (and a bare 0, which is not ambiguous) the flags pass, and only then is the missing config the error.
  const ok = await ferry('vm', 'migrate', 'a', '--deadline', '10m', '--bandwidth', '0', '--max-downtime', '300ms', '--json');
  assert.equal(errorCode(ok), 'FERRY_E_CONFIG');
  assert.equal(ok.code, 1);
  const human = await ferry('vm', 'create', 'a', '--memory', '256');
  assert.equal(human.code, 2);
  assert.match(human.stderr, /^error FERRY_E_UNIT_REQUIRED: --memory 256 needs a unit: e\.g\. 256M/);
});

test('other bad input exits 2 with its code and no config: names, counts, --limit, -o, VM files', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-cli-'));
  try {
    writeFileSync(join(dir, 'typo.yaml'), 'memroy: 256M\n');
    writeFileSync(join(dir, 'list.yaml'), '- a\n- b\n');
    writeFileSync(join(dir, 'bare.yaml'), 'memory: 256\n');
    for (const [args, code] of [
      [['vm', 'create', 'Bad_Name'], 'FERRY_E_BAD_NAME'],
      [['vm', 'create', 'a', '--vcpus', 'two'], 'FERRY_E_BAD_INPUT'],
      [['migration', 'list', '--limit', '0'], 'FERRY_E_BAD_INPUT'],
      [['migration', 'list', '--limit', '5000'], 'FERRY_E_BAD_INPUT'],
      [['vm', 'migrate', 'a', '--multifd', '99'], 'FERRY_E_BAD_INPUT'],
      [['vm', 'list', '-o', 'xml'], 'FERRY_E_USAGE'],
      [['vm', 'delete', 'a', '-o', 'wide'], 'FERRY_E_USAGE'],
      [['vm', 'create', 'a', '-f', join(dir, 'missing.yaml')], 'FERRY_E_BAD_MANIFEST'],
      [['vm', 'create', 'a', '-f', join(dir, 'typo.yaml')], 'FERRY_E_BAD_MANIFEST'],
      [['vm', 'create', 'a', '-f', join(dir, 'list.yaml')], 'FERRY_E_BAD_MANIFEST'],
      [['vm', 'create', 'a', '-f', join(dir, 'bare.yaml')], 'FERRY_E_UNIT_REQUIRED'],
    ] as const) {
      const r = await ferry(...args, '--json');
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.equal(errorCode(r), code, args.join(' '));
    }
    // The same error as YAML with -o yaml.
    const y = await ferry('vm', 'create', 'a', '--memory', '1', '-o', 'yaml');
    assert.equal((parseYaml(y.stdout) as { error: { code: string } }).error.code, 'FERRY_E_UNIT_REQUIRED');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('events --json answers in JSON too (its listing is an action called by the command itself)', async () => {
  const r = await ferry('events', '--after', 'soon', '--json');
  assert.equal(r.code, 2, r.stderr);
  assert.equal(errorCode(r), 'FERRY_E_BAD_INPUT');
});

test('a VM file gives the fields of the flags; flags beside it win; relative paths start at the file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-cli-'));
  try {
    const file = join(dir, 'vm.yaml');
    writeFileSync(file, 'name: other\nmemory: 512M\nvcpus: 2\ndiskImage: disks/base.qcow2\nguestAgent: false\nstatus:\n  host: h9\n');
    const body = createBody('web1', { memory: '1G', net: 'vm0' }, file);
    assert.deepEqual(body, { name: 'web1', memory: '1G', vcpus: 2, diskImage: join(dir, 'disks/base.qcow2'), guestAgent: false, network: 'vm0' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the create fields are the API's create body, and each one is a flag", () => {
  const apiFields = Object.keys((CreateVm as unknown as { properties: Record<string, unknown> }).properties).filter((k) => k !== 'name');
  assert.deepEqual(CREATE_FIELDS.map((f) => f.key).sort(), apiFields.sort(), 'a field of POST /api/v1/vms is missing from CREATE_FIELDS, or one is extra');
  const create = buildProgram().commands.find((c) => c.name() === 'vm')!.commands.find((c) => c.name() === 'create')!;
  const flags = new Set(create.options.map((o) => o.long));
  for (const f of CREATE_FIELDS) assert.ok(flags.has(`--${f.flag ?? f.key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`), f.key);
});

test('vm show -o yaml: the fields that recreate the VM (sizes exact, the image by name), and a status create ignores', () => {
  const vm = (spec: VmJson['spec']): VmJson => ({ name: spec.name, host: 'h1', state: 'running', spec, bootId: null, ready: false, ip: null, createdAt: 'c', updatedAt: 'u' });
  const onImage = vm(
    defaultVmSpec('d1', {
      memoryBytes: 1536 * MIB,
      boot: { kind: 'disk' },
      disks: [{ id: 'vda', sizeBytes: 8 * MIB, shared: false, backing: { path: '/data/images/img1.raw', format: 'raw' } }],
      nics: [{ id: 'net0', mac: '52:54:00:00:00:01', network: 'vm0', ip: '10.0.0.5/24' }],
      guestChannel: false,
      guestAgent: true,
    }),
  );
  const images = [{ name: 'img1', path: '/data/images/img1.raw', format: 'raw', virtualSizeBytes: 0, fileBytes: 0, sha256: '', createdAt: '', usedBy: [] }];
  const m = vmManifest(onImage, images);
  const { status, ...fields } = m;
  assert.deepEqual(fields, { name: 'd1', memory: '1536M', vcpus: 1, disk: '8M', image: 'img1', network: 'vm0', ip: '10.0.0.5/24', guestAgent: true });
  assert.match(JSON.stringify(status), /overlay .*→ base \/data\/images\/img1\.raw \(raw, image img1\)/);
  // The same disk outside the store is a disk image of its own.
  assert.equal(vmManifest(onImage, []).diskImage, '/data/images/img1.raw');
  assert.equal(vmManifest(onImage, []).image, undefined);
  assert.deepEqual([exactSize(256 * MIB), exactSize(2 * 1024 * MIB), exactSize(1536), exactSize(1000)], ['256M', '2G', '1536B', '1000B']);
});

test('ferry completion bash loads in bash, and completes commands, flags and flag values', () => {
  const bin = join(PACKAGE_ROOT, 'bin', 'ferry.js');
  const loaded = execFileSync('bash', ['-c', `source <("${process.execPath}" "${bin}" completion bash) && complete -p ferry`], { encoding: 'utf8' });
  assert.match(loaded, /complete .*-F _ferry ferry/);
  const script = bashCompletion(buildProgram());
  const complete = (...words: string[]): string[] =>
    execFileSync('bash', ['-c', `${script}\nCOMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _ferry; printf '%s\\n' "\${COMPREPLY[@]}"`, 'bash', 'ferry', ...words], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean);
  assert.deepEqual(complete('vm', 'cr'), ['create']);
  assert.deepEqual(complete('vm', 'list', '-o', ''), ['json', 'yaml', 'wide', 'name']);
  assert.deepEqual(complete('migration', 'list', '--li'), ['--limit']);
  // A flag's value is not taken for a command: after `--memory 256M`, still vm create's flags.
  assert.ok(complete('vm', 'create', 'web1', '--memory', '256M', '--ne').includes('--net'));
  assert.ok(complete('').includes('version') && complete('').includes('completion'), 'new commands appear by themselves');
  assert.deepEqual(complete('completion', ''), ['bash', 'zsh']);
});
