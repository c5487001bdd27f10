/**
 * Migrations: the list filtered by state, and one migration — live while it runs (phase steps, a bar that
 * never runs backwards, charts of remaining memory and disk, rates, the downtime limit with its escalations,
 * the ETA or "not converging", cancel), then its timeline and figures.
 */
import { useEffect, useState } from 'preact/hooks';
import type { MigrationJson } from '../../../src/common/migration.ts';
import { api } from '../api.ts';
import { Chart } from '../chart.tsx';
import {
  downtimeLimitAt,
  escalationMarks,
  etaText,
  formatBytes,
  formatMs,
  formatRate,
  isFinal,
  MonotoneProgress,
  phaseDurations,
  phaseSteps,
} from '../logic.ts';
import { migrations, reloadMigration, samples } from '../store.ts';

const bars = new MonotoneProgress();
const STATE_FILTERS = ['all', 'active', 'completed', 'failed', 'cancelled'] as const;

export function MigrationsView() {
  const [state, setState] = useState<(typeof STATE_FILTERS)[number]>('all');
  const list = Object.values(migrations.value)
    .filter((m) => state === 'all' || (state === 'active' ? !isFinal(m.state) : m.state === state))
    .sort((a, b) => b.startedAt.localeCompare(a.startedAt));
  return (
    <section aria-labelledby="migrations-title">
      <h1 id="migrations-title">Migrations</h1>
      <label for="state-filter">State</label>
      <select id="state-filter" value={state} onChange={(e) => setState((e.currentTarget as HTMLSelectElement).value as typeof state)}>
        {STATE_FILTERS.map((s) => (
          <option value={s}>{s}</option>
        ))}
      </select>
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">VM</th>
              <th scope="col">State</th>
              <th scope="col">Phase</th>
              <th scope="col">Route</th>
              <th scope="col">Started</th>
              <th scope="col">Duration</th>
              <th scope="col">Error</th>
            </tr>
          </thead>
          <tbody>
            {list.map((m) => (
              <tr data-migration={m.id}>
                <td>
                  <a href={`#/migrations/${m.id}`}>{m.vm}</a>
                </td>
                <td>
                  <span class={`pill state-${m.state}`}>{m.state}</span>
                </td>
                <td>{m.phase}</td>
                <td>
                  {m.source} → {m.destination}
                </td>
                <td>{new Date(m.startedAt).toLocaleString()}</td>
                <td>{formatMs(m.totalMs)}</td>
                <td>{m.error ? <code>{m.error.code}</code> : '—'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {list.length === 0 && <p class="muted">No migration.</p>}
    </section>
  );
}

export function ProgressBar({ m }: { m: MigrationJson }) {
  const pct = bars.show(m.id, m.progress?.percent, m.state);
  return (
    <div class="bar big" role="progressbar" aria-label={`Progress of ${m.vm}`} aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(pct)}>
      <div class={`fill state-${m.state}`} style={{ width: `${pct}%` }} />
      <span>{pct.toFixed(0)} %</span>
    </div>
  );
}

function Steps({ m }: { m: MigrationJson }) {
  return (
    <ol class="steps" aria-label="Phases">
      {phaseSteps(m).map((s) => (
        <li class={`step ${s.status}`} aria-current={s.status === 'current' ? 'step' : undefined} data-phase={s.phase}>
          {s.phase}
        </li>
      ))}
    </ol>
  );
}

function Charts({ m }: { m: MigrationJson }) {
  const pts = samples.value[m.id] ?? [];
  const times = pts.map((p) => p.t);
  const marks = escalationMarks(m);
  const hasDisk = pts.some((p) => p.diskRemainingBytes !== null);
  return (
    <div class="charts">
      <Chart
        title="Remaining"
        times={times}
        marks={marks}
        series={[
          { label: 'memory', values: pts.map((p) => p.remainingBytes), format: formatBytes },
          ...(hasDisk ? [{ label: 'disk', values: pts.map((p) => p.diskRemainingBytes), format: formatBytes }] : []),
        ]}
      />
      <Chart
        title="Transfer and dirty rate"
        times={times}
        marks={marks}
        series={[
          { label: 'transfer', values: pts.map((p) => p.rateBytesPerSec), format: formatRate },
          { label: 'dirty', values: pts.map((p) => p.dirtyRateBytesPerSec), format: formatRate },
        ]}
      />
      <Chart title="Downtime limit" times={times} marks={marks} series={[{ label: 'limit', values: pts.map((p) => downtimeLimitAt(m, p.t)), format: formatMs }]} />
    </div>
  );
}

function Figures({ m }: { m: MigrationJson }) {
  const p = m.progress;
  return (
    <dl class="facts figures">
      <dt>State</dt>
      <dd data-field="state">{m.state}</dd>
      <dt>QEMU status</dt>
      <dd>{m.qemuStatus ?? '—'}</dd>
      <dt>ETA</dt>
      <dd data-field="eta">{etaText(m)}</dd>
      <dt>Moved</dt>
      <dd>{p ? `${formatBytes(p.transferredBytes)} of ${formatBytes(p.totalBytes)}` : '—'}</dd>
      <dt>Rate</dt>
      <dd>{formatRate(p?.rateBytesPerSec)}</dd>
      <dt>Dirty rate</dt>
      <dd>{formatRate(p?.dirtyRateBytesPerSec)}</dd>
      <dt>Pass</dt>
      <dd>{p?.pass ?? '—'}</dd>
      <dt>End to end</dt>
      <dd>{formatMs(m.totalMs)}</dd>
      <dt>QEMU total</dt>
      <dd>{formatMs(m.qemuTotalMs)}</dd>
      <dt>QEMU downtime</dt>
      <dd>{formatMs(m.downtimeMs)}</dd>
      <dt>Guest-seen downtime</dt>
      <dd>
        {formatMs(m.guestDowntimeMs)}
        {m.guestDowntimeProbe ? ` (${m.guestDowntimeProbe})` : ''}
      </dd>
      <dt>Transferred</dt>
      <dd>{formatBytes(m.transferredBytes)}</dd>
      <dt>Error</dt>
      <dd data-field="error">{m.error ? `${m.error.code}: ${m.error.message}` : '—'}</dd>
    </dl>
  );
}

export function MigrationView({ id }: { id: string }) {
  const [error, setError] = useState<string | null>(null);
  const m = migrations.value[id];
  // Opened by its URL: a job older than the list's newest 200 is read by its id.
  useEffect(() => {
    if (!migrations.value[id]) void reloadMigration(id);
  }, [id]);
  if (!m) return <p class="muted">Loading migration {id}…</p>;
  const done = isFinal(m.state);
  const cancel = async () => {
    try {
      await api.cancel(m.id);
    } catch (err) {
      setError(`${(err as { code?: string }).code ?? 'error'}: ${(err as Error).message}`);
    }
  };
  return (
    <section aria-labelledby="migration-title" data-migration={m.id} data-state={m.state}>
      <h1 id="migration-title">
        {m.mode} migration of <a href={`#/vms/${m.vm}`}>{m.vm}</a>: {m.source} → {m.destination} <span class={`pill state-${m.state}`}>{m.state}</span>
      </h1>
      <Steps m={m} />
      <ProgressBar m={m} />
      <p class="eta" aria-live="polite">
        {etaText(m)}
      </p>
      {!done && (
        <button type="button" class="danger" onClick={cancel} disabled={m.state === 'postcopy' || m.state === 'switching'}>
          Cancel migration
        </button>
      )}
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      <Charts m={m} />
      <div class="grid">
        <article class="card">
          <h2>Figures</h2>
          <Figures m={m} />
        </article>
        <article class="card">
          <h2>Timeline</h2>
          <ol class="timeline">
            {phaseDurations(m).map((e) => (
              <li>
                <strong>{e.phase}</strong> {e.state} <span class="muted">{formatMs(e.ms)}</span>
              </li>
            ))}
          </ol>
          {m.escalations.length > 0 && (
            <>
              <h3>Escalations</h3>
              <ul>
                {m.escalations.map((e) => (
                  <li>
                    {new Date(e.at).toLocaleTimeString()} {e.step.kind}: {e.step.reason}
                  </li>
                ))}
              </ul>
            </>
          )}
        </article>
      </div>
    </section>
  );
}
