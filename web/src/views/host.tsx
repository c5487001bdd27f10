/** A host's page: its card, and drain — the plan first (each VM, where it would go, why), then each VM's progress. */
import { useEffect, useState } from 'preact/hooks';
import type { DrainPlanJson } from '../../../src/common/api.ts';
import { api } from '../api.ts';
import { drains, hosts, migrations, reloadDrain } from '../store.ts';
import { HostCard } from './cluster.tsx';
import { ProgressBar } from './migrations.tsx';

export function HostView({ name }: { name: string }) {
  const [plan, setPlan] = useState<DrainPlanJson | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => void reloadDrain(name), [name]);
  const h = hosts.value.find((x) => x.name === name);
  if (!h) return <p class="muted">No host named {name} (yet).</p>;
  const drain = drains.value[name];
  const fail = (err: unknown) => setError(`${(err as { code?: string }).code ?? 'error'}: ${(err as Error).message}`);
  const showPlan = () => api.drainPlan(name).then(setPlan, fail);
  const start = async () => {
    try {
      await api.drain(name);
      setPlan(null);
      await reloadDrain(name);
    } catch (err) {
      fail(err);
    }
  };
  const undrain = () => api.undrain(name).catch(fail);
  return (
    <section aria-labelledby="hostpage-title">
      <h1 id="hostpage-title">Host {name}</h1>
      <HostCard h={h} />
      <h2>Drain</h2>
      <div class="actions">
        <button type="button" onClick={showPlan} disabled={drain?.state === 'draining'}>
          Plan a drain…
        </button>
        {h.maintenance && drain?.state !== 'draining' && (
          <button type="button" class="secondary" onClick={undrain}>
            Undrain
          </button>
        )}
      </div>
      {error && (
        <p role="alert" class="error">
          {error}
        </p>
      )}
      {plan && (
        <div class="card" aria-labelledby="plan-title" role="region">
          <h3 id="plan-title">Plan: {plan.feasible ? 'every VM has a destination' : 'not every VM can move'}</h3>
          <table>
            <thead>
              <tr>
                <th scope="col">VM</th>
                <th scope="col">Destination</th>
                <th scope="col">Strategy</th>
                <th scope="col">Why</th>
              </tr>
            </thead>
            <tbody>
              {plan.plan.map((i) => (
                <tr data-plan-vm={i.vm}>
                  <td>{i.vm}</td>
                  <td>{i.destination ?? 'none'}</td>
                  <td>{i.strategy}</td>
                  <td>{i.reason}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {plan.plan.length === 0 && <p class="muted">No VM on this host: draining only puts it in maintenance.</p>}
          <div class="actions">
            <button type="button" class="secondary" onClick={() => setPlan(null)}>
              Close plan
            </button>
            <button type="button" class="danger" onClick={start}>
              Start drain
            </button>
          </div>
        </div>
      )}
      {drain && (
        <div class="card" role="region" aria-labelledby="drain-title" data-drain-state={drain.state}>
          <h3 id="drain-title">Drain {drain.state}</h3>
          <table>
            <thead>
              <tr>
                <th scope="col">VM</th>
                <th scope="col">Status</th>
                <th scope="col">Destination</th>
                <th scope="col">Progress</th>
                <th scope="col">Error</th>
              </tr>
            </thead>
            <tbody>
              {drain.items.map((i) => {
                const m = i.migration ? migrations.value[i.migration] : undefined;
                return (
                  <tr data-drain-vm={i.vm} data-status={i.status}>
                    <td>{i.vm}</td>
                    <td>{i.status}</td>
                    <td>{i.destination ?? '—'}</td>
                    <td>{m ? <ProgressBar m={m} /> : '—'}</td>
                    <td>{i.error ? <code title={i.error.message}>{i.error.code}</code> : '—'}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
