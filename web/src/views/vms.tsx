/** VMs: the table with a text filter, and one VM's page (spec, disks, network, migration history, migrate). */
import { useState } from 'preact/hooks';
import { filterVms, formatBytes, formatMs } from '../logic.ts';
import { migrations, vms } from '../store.ts';
import { MigrateDialog } from './migrate.tsx';

export function VmsView() {
  const [text, setText] = useState('');
  const shown = filterVms(vms.value, text);
  return (
    <section aria-labelledby="vms-title">
      <h1 id="vms-title">VMs</h1>
      <label for="vm-filter">Filter</label>
      <input id="vm-filter" type="search" value={text} onInput={(e) => setText((e.currentTarget as HTMLInputElement).value)} placeholder="name, host, state, address…" />
      <div class="table-wrap">
        <table>
          <caption class="sr-only">VMs</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Host</th>
              <th scope="col">State</th>
              <th scope="col">Ready</th>
              <th scope="col">Memory</th>
              <th scope="col">vCPUs</th>
              <th scope="col">Address</th>
              <th scope="col">Boot id</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((v) => (
              <tr data-vm={v.name}>
                <td>
                  <a href={`#/vms/${v.name}`}>{v.name}</a>
                </td>
                <td>
                  <a href={`#/hosts/${v.host}`}>{v.host}</a>
                </td>
                <td>
                  <span class={`pill state-${v.state}`}>{v.state}</span>
                </td>
                <td>{v.ready ? 'yes' : 'no'}</td>
                <td>{formatBytes(v.spec.memoryBytes)}</td>
                <td>{v.spec.vcpus}</td>
                <td>{v.ip ?? '—'}</td>
                <td>
                  <code>{v.bootId?.slice(0, 8) ?? '—'}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {shown.length === 0 && <p class="muted">No VM matches.</p>}
    </section>
  );
}

export function VmView({ name }: { name: string }) {
  const [migrating, setMigrating] = useState(false);
  const vm = vms.value.find((v) => v.name === name);
  if (!vm) return <p class="muted">No VM named {name} (yet).</p>;
  const history = Object.values(migrations.value)
    .filter((m) => m.vm === name)
    .sort((a, b) => b.startedAt.localeCompare(a.startedAt));
  const s = vm.spec;
  return (
    <section aria-labelledby="vm-title">
      <h1 id="vm-title">
        VM {vm.name} <span class={`pill state-${vm.state}`}>{vm.state}</span>
      </h1>
      <p>
        on <a href={`#/hosts/${vm.host}`}>{vm.host}</a> · {vm.ready ? 'guest ready' : 'guest not ready'} · boot id <code>{vm.bootId ?? '—'}</code>
      </p>
      <button type="button" onClick={() => setMigrating(true)} disabled={vm.state !== 'running' && vm.state !== 'paused' && vm.state !== 'stopped'}>
        Migrate…
      </button>
      {migrating && <MigrateDialog vm={vm} onClose={() => setMigrating(false)} />}
      <div class="grid">
        <article class="card">
          <h2>Spec</h2>
          <dl class="facts">
            <dt>Memory</dt>
            <dd>{formatBytes(s.memoryBytes)}</dd>
            <dt>vCPUs</dt>
            <dd>{s.vcpus}</dd>
            <dt>CPU model</dt>
            <dd>{s.cpuModel}</dd>
            <dt>Machine</dt>
            <dd>{s.machine}</dd>
            <dt>Boot</dt>
            <dd>{s.boot.kind === 'kernel' ? `kernel ${s.boot.image}` : s.boot.kind}</dd>
          </dl>
        </article>
        <article class="card">
          <h2>Disks</h2>
          {s.disks.length === 0 ? (
            <p class="muted">None.</p>
          ) : (
            <ul>
              {s.disks.map((d) => (
                <li>
                  <code>{d.id}</code> {formatBytes(d.sizeBytes)} {d.shared ? 'shared' : 'local'} {d.path ? <code>{d.path}</code> : null}
                </li>
              ))}
            </ul>
          )}
          <h2>Network</h2>
          <ul>
            {s.nics.map((n) => (
              <li>
                <code>{n.id}</code> on {n.network} · {n.mac} · {n.ip ?? vm.ip ?? 'no address'}
              </li>
            ))}
          </ul>
        </article>
      </div>
      <h2>Migrations</h2>
      {history.length === 0 ? (
        <p class="muted">Never migrated.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Started</th>
                <th scope="col">Route</th>
                <th scope="col">Mode</th>
                <th scope="col">Result</th>
                <th scope="col">End to end</th>
                <th scope="col">QEMU downtime</th>
                <th scope="col">Guest-seen downtime</th>
                <th scope="col">Bytes</th>
                <th scope="col">Error</th>
              </tr>
            </thead>
            <tbody>
              {history.map((m) => (
                <tr>
                  <td>
                    <a href={`#/migrations/${m.id}`}>{new Date(m.startedAt).toLocaleString()}</a>
                  </td>
                  <td>
                    {m.source} → {m.destination}
                  </td>
                  <td>{m.mode}</td>
                  <td>
                    <span class={`pill state-${m.state}`}>{m.state}</span>
                  </td>
                  <td>{formatMs(m.totalMs)}</td>
                  <td>{formatMs(m.downtimeMs)}</td>
                  <td>{formatMs(m.guestDowntimeMs)}</td>
                  <td>{formatBytes(m.transferredBytes)}</td>
                  <td>{m.error ? <code title={m.error.message}>{m.error.code}</code> : '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
