/** The lab's network for real: two host namespaces, the bridges, reachability, link cuts, clean teardown. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  createLabNetwork,
  destroyLabNetwork,
  execInHost,
  findLabObjects,
  labHostNamespace,
  linkDown,
  linkUp,
  listNamespaces,
  type LabNetwork,
} from '../../src/lab/net.ts';

const PORT = 7001;
const SERVER_JS =
  "const [h,p,n]=process.argv.slice(1);require('net').createServer(s=>s.end(n+'\\n')).listen(+p,h,()=>console.log('ready'))";
const CLIENT_JS =
  "const [h,p]=process.argv.slice(1);const s=require('net').connect(+p,h);let d='';s.setTimeout(1500,()=>process.exit(3));" +
  "s.on('data',c=>d+=c);s.on('end',()=>{process.stdout.write(d);process.exit(0)});s.on('error',()=>process.exit(2))";

/** A one-line TCP responder inside a namespace (ping is not installed on every machine). */
async function startResponder(ns: string, host: string, reply: string): Promise<ChildProcess> {
  const child = spawn(
    'ip',
    ['netns', 'exec', ns, process.execPath, '-e', SERVER_JS, host, String(PORT), reply],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const [chunk] = (await Promise.race([once(child.stdout!, 'data'), sleep(10_000).then(() => [null])])) as [
    unknown,
  ];
  assert.match(String(chunk), /ready/, `responder in ${ns} did not start`);
  return child;
}

async function fromHost(lab: string, host: number, addr: string): Promise<string | null> {
  const r = await execInHost(lab, host, [process.execPath, '-e', CLIENT_JS, addr, String(PORT)], {
    timeoutMs: 10_000,
  });
  return r.code === 0 ? r.stdout.trim() : null;
}

function fromRoot(addr: string): Promise<string | null> {
  return new Promise((resolve) => {
    const s = connect(PORT, addr);
    let d = '';
    s.setTimeout(1500, () => (s.destroy(), resolve(null)));
    s.on('data', (c) => (d += String(c)));
    s.on('end', () => resolve(d.trim()));
    s.on('error', () => resolve(null));
  });
}

async function assertGone(lab: string): Promise<void> {
  const left = await findLabObjects(lab);
  assert.deepEqual(left, { namespaces: [], links: [] }, `lab ${lab} left objects behind`);
  const out = await new Promise<string>((resolve) => {
    const c = spawn('ip', ['-br', 'link'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let s = '';
    c.stdout.on('data', (b) => (s += String(b)));
    c.on('close', () => resolve(s));
  });
  assert.doesNotMatch(out, new RegExp(`f[mv]-${lab}`), 'an interface with the lab tag survived');
}

test('a 2-host lab network: addresses, reachability, one VM LAN, link cut, clean down', async () => {
  const lab = 'n' + randomBytes(3).toString('hex'); // 7 chars, unique per run
  const children: ChildProcess[] = [];
  try {
    const net: LabNetwork = await createLabNetwork({ name: lab, hosts: 2 });
    assert.equal(net.hosts.length, 2);
    assert.equal(net.hosts[0]!.namespace, labHostNamespace(lab, 1));
    assert.equal(net.hosts[0]!.namespace, `ferry-${lab}-h1`);
    const k = net.index;
    assert.equal(net.gateway, `10.231.${k}.1`);
    assert.equal(net.hosts[1]!.address, `10.231.${k}.12`);
    const ns = await listNamespaces();
    assert.ok(ns.includes(`ferry-${lab}-h1`) && ns.includes(`ferry-${lab}-h2`));

    // Each namespace has its address on eth0, and no default route (nothing leaves the machine).
    for (const h of net.hosts) {
      const r = await execInHost(lab, h.index, ['ip', '-j', '-4', 'addr', 'show', 'dev', 'eth0']);
      const addrs = JSON.parse(r.stdout) as { addr_info: { local: string; prefixlen: number }[] }[];
      assert.deepEqual(
        addrs[0]!.addr_info.map((a) => `${a.local}/${a.prefixlen}`),
        [`${h.address}/24`],
      );
      const routes = await execInHost(lab, h.index, ['ip', '-j', '-4', 'route', 'show']);
      assert.ok(!routes.stdout.includes('default'), `${h.namespace} has a default route`);
    }

    // Management network: h1 → h2, h2 → h1, root → both.
    for (const h of net.hosts) children.push(await startResponder(h.namespace, h.address, h.name));
    assert.equal(await fromHost(lab, 1, net.hosts[1]!.address), 'h2');
    assert.equal(await fromHost(lab, 2, net.hosts[0]!.address), 'h1');
    assert.equal(await fromRoot(net.hosts[0]!.address), 'h1');
    assert.equal(await fromRoot(net.hosts[1]!.address), 'h2');

    // VM LAN: taps go into each host's br-vm, and both br-vm are one L2 segment with the root switch.
    // Addresses on the two br-vm (same /24, no route between) prove L2 adjacency.
    const vmAddr = (i: number): string => `10.232.${k}.${200 + i}`;
    for (const h of net.hosts) {
      const tap = `tapt${h.index}`;
      for (const argv of [
        ['ip', 'tuntap', 'add', tap, 'mode', 'tap'],
        ['ip', 'link', 'set', tap, 'master', 'br-vm', 'up'],
        ['ip', 'addr', 'add', `${vmAddr(h.index)}/24`, 'dev', 'br-vm'],
      ]) {
        const r = await execInHost(lab, h.index, argv);
        assert.equal(r.code, 0, `${argv.join(' ')}: ${r.stderr}`);
      }
      const ports = await execInHost(lab, h.index, ['ip', '-j', 'link', 'show', 'master', 'br-vm']);
      const names = (JSON.parse(ports.stdout) as { ifname: string }[]).map((p) => p.ifname).sort();
      assert.deepEqual(names, [tap, 'vm-uplink']);
      children.push(await startResponder(h.namespace, vmAddr(h.index), `vm-${h.name}`));
    }
    assert.equal(await fromHost(lab, 1, vmAddr(2)), 'vm-h2');
    assert.equal(await fromHost(lab, 2, vmAddr(1)), 'vm-h1');
    assert.equal(await fromRoot(vmAddr(1)), 'vm-h1', 'root reaches the VM LAN via its switch address');

    // Cutting h2's management link: h1 no longer reaches it; restoring brings it back.
    await linkDown(lab, 2);
    assert.equal(await fromHost(lab, 1, net.hosts[1]!.address), null, 'h2 still reachable after linkDown');
    assert.equal(await fromRoot(net.hosts[1]!.address), null);
    assert.equal(await fromHost(lab, 1, vmAddr(2)), 'vm-h2', 'linkDown must not cut the VM LAN');
    await linkUp(lab, 'h2');
    let back: string | null = null;
    for (let i = 0; i < 20 && back === null; i++) {
      back = await fromHost(lab, 1, net.hosts[1]!.address);
      if (back === null) await sleep(200);
    }
    assert.equal(back, 'h2', 'h2 unreachable after linkUp');

    // down: also kills what runs inside the namespaces, and is idempotent.
    const removed = await destroyLabNetwork(lab);
    assert.equal(removed.namespaces.length, 2);
    await assertGone(lab);
    for (const c of children) assert.ok(c.exitCode !== null || c.signalCode !== null || (await exited(c)));
    const again = await destroyLabNetwork(lab);
    assert.deepEqual(again, { namespaces: [], links: [] });
  } finally {
    for (const c of children)
      if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
    await destroyLabNetwork(lab).catch(() => undefined);
    await assertGone(lab);
  }
});

test('down after a half-built lab removes the leftovers it finds by name', async () => {
  const lab = 'p' + randomBytes(3).toString('hex');
  try {
    const net = await createLabNetwork({ name: lab, hosts: 1 });
    // Simulate a crash in the middle of `up`: a second host's namespace and veth, no state anywhere.
    const ns = labHostNamespace(lab, 2);
    await execRoot(['ip', 'netns', 'add', ns]);
    await execRoot([
      'ip',
      'link',
      'add',
      `fm-${lab}-h2`,
      'type',
      'veth',
      'peer',
      'name',
      'eth0',
      'netns',
      ns,
    ]);
    await assert.rejects(createLabNetwork({ name: lab, hosts: 2 }), { code: 'FERRY_E_LAB' });
    const removed = await destroyLabNetwork(lab);
    assert.deepEqual(removed.namespaces, [net.hosts[0]!.namespace, ns]);
    assert.ok(removed.links.includes(`fm-${lab}-h2`));
  } finally {
    await destroyLabNetwork(lab).catch(() => undefined);
    await assertGone(lab);
  }
});

test('two labs coexist on distinct subnets', async () => {
  const a = 'a' + randomBytes(3).toString('hex');
  const b = 'b' + randomBytes(3).toString('hex');
  try {
    const [na, nb] = await Promise.all([
      createLabNetwork({ name: a, hosts: 1 }),
      createLabNetwork({ name: b, hosts: 1 }),
    ]);
    assert.notEqual(na.index, nb.index);
    await destroyLabNetwork(a);
    assert.equal((await findLabObjects(b)).namespaces.length, 1, 'down of one lab touched the other');
  } finally {
    await destroyLabNetwork(a).catch(() => undefined);
    await destroyLabNetwork(b).catch(() => undefined);
    await assertGone(a);
    await assertGone(b);
  }
});

async function exited(c: ChildProcess): Promise<boolean> {
  if (c.exitCode !== null || c.signalCode !== null) return true;
  await Promise.race([once(c, 'exit'), sleep(3000)]);
  return c.exitCode !== null || c.signalCode !== null;
}

async function execRoot(argv: string[]): Promise<void> {
  const c = spawn(argv[0]!, argv.slice(1), { stdio: 'inherit' });
  const [code] = (await once(c, 'exit')) as [number | null];
  assert.equal(code, 0, argv.join(' '));
}
