/** The cluster: every host with its state, maintenance, QEMU, CPU, capacity bars (allocated vs free) and VMs. */
import type { HostSummaryJson } from '../../../src/common/api.ts';
import { formatBytes, share } from '../logic.ts';
import { hosts, vms } from '../store.ts';

export function Bar({ label, used, total, text }: { label: string; used: number; total: number; text: string }) {
  const pct = share(used, total);
  return (
    <div class="capacity">
      <span class="capacity-label">{label}</span>
      <div class="bar" role="meter" aria-label={label} aria-valuemin={0} aria-valuemax={total} aria-valuenow={used} aria-valuetext={text}>
        <div class={`fill ${pct > 90 ? 'hot' : ''}`} style={{ width: `${pct}%` }} />
      </div>
      <span class="capacity-text">{text}</span>
    </div>
  );
}

export function HostCard({ h }: { h: HostSummaryJson }) {
  const mine = vms.value.filter((v) => v.host === h.name);
  const inv = h.inventory;
  const memUsed = mine.reduce((s, v) => s + v.spec.memoryBytes, 0);
  const vcpus = mine.reduce((s, v) => s + v.spec.vcpus, 0);
  return (
    <article class="card host" aria-labelledby={`host-${h.name}`} data-host={h.name}>
      <header>
        <h2 id={`host-${h.name}`}>
          <a href={`#/hosts/${h.name}`}>{h.name}</a>
        </h2>
        <span class={`pill state-${h.state}`}>{h.state}</span>
        {h.maintenance && <span class="pill state-maintenance">maintenance</span>}
      </header>
      <dl class="facts">
        <dt>QEMU</dt>
        <dd>{inv ? `${inv.qemu.version} (${inv.accel})` : '—'}</dd>
        <dt>CPU</dt>
        <dd>{inv ? `${inv.cpu.model} · ${inv.cpu.cores} cores` : '—'}</dd>
      </dl>
      {inv && (
        <>
          <Bar label="Memory" used={memUsed} total={inv.memoryBytes} text={`${formatBytes(memUsed)} allocated · ${formatBytes(h.freeMemoryBytes)} free of ${formatBytes(inv.memoryBytes)}`} />
          <Bar label="vCPUs" used={vcpus} total={inv.cpu.cores} text={`${vcpus} vCPUs on ${inv.cpu.cores} cores`} />
        </>
      )}
      <h3>VMs</h3>
      {mine.length === 0 ? (
        <p class="muted">None.</p>
      ) : (
        <ul class="vm-list">
          {mine.map((v) => (
            <li>
              <a href={`#/vms/${v.name}`}>{v.name}</a> <span class={`pill state-${v.state}`}>{v.state}</span> <span class="muted">{formatBytes(v.spec.memoryBytes)}</span>
            </li>
          ))}
        </ul>
      )}
    </article>
  );
}

export function ClusterView() {
  return (
    <section aria-labelledby="cluster-title">
      <h1 id="cluster-title">Cluster</h1>
      {hosts.value.length === 0 && <p class="muted">No host has joined yet.</p>}
      <div class="grid">
        {hosts.value.map((h) => (
          <HostCard h={h} />
        ))}
      </div>
    </section>
  );
}
