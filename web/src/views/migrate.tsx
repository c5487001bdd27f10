/**
 * The migrate dialog: every host with the scheduler's verdict for this VM (fits, or why not), and the
 * options of `ferry vm migrate`. On start it opens the migration's live view.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { PlacementJson, VmJson } from '../../../src/common/api.ts';
import type { MigrateRequest } from '../../../src/common/policy.ts';
import { api } from '../api.ts';
import { reloadMigration } from '../store.ts';

export function MigrateDialog({ vm, onClose }: { vm: VmJson; onClose: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [verdicts, setVerdicts] = useState<PlacementJson[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    dialog.current?.showModal();
    api.placements(vm.name).then(setVerdicts, (e: Error) => setError(e.message));
  }, [vm.name]);

  const submit = async (e: Event) => {
    e.preventDefault();
    const f = new FormData(e.currentTarget as HTMLFormElement);
    const text = (k: string) => String(f.get(k) ?? '').trim();
    const to = text('to');
    const req: MigrateRequest = {
      mode: text('mode') as 'live' | 'cold',
      storage: text('storage') as 'auto' | 'shared' | 'copy',
      postcopy: text('postcopy') as 'never' | 'auto' | 'always',
      tls: f.get('tls') === 'on',
      autoConverge: f.get('autoConverge') === 'on',
      xbzrle: f.get('xbzrle') === 'on',
      ...(to ? { to } : {}),
      ...(text('maxDowntime') ? { maxDowntime: text('maxDowntime') } : {}),
      ...(text('bandwidth') ? { bandwidth: text('bandwidth') } : {}),
      ...(text('deadline') ? { deadline: text('deadline') } : {}),
      ...(text('multifd') ? { multifd: Number(text('multifd')) } : {}),
    };
    setBusy(true);
    try {
      const m = await api.migrate(vm.name, req);
      await reloadMigration(m.id);
      dialog.current?.close();
      location.hash = `#/migrations/${m.id}`;
    } catch (err) {
      setError(`${(err as { code?: string }).code ?? 'error'}: ${(err as Error).message}`);
    } finally {
      setBusy(false);
    }
  };

  return (
    <dialog ref={dialog} onClose={onClose} aria-labelledby="migrate-title">
      <form onSubmit={submit}>
        <h2 id="migrate-title">Migrate {vm.name}</h2>
        <fieldset>
          <legend>Destination</legend>
          <label class="choice">
            <input type="radio" name="to" value="" defaultChecked /> Let the scheduler choose
          </label>
          {verdicts === null && !error && <p class="muted">Asking the scheduler…</p>}
          {verdicts?.map((v) => (
            <label class={`choice ${v.fits ? '' : 'refused'}`} data-host={v.host}>
              <input type="radio" name="to" value={v.host} disabled={!v.fits} /> <strong>{v.host}</strong>{' '}
              <span class={v.fits ? 'fits' : 'muted'}>{v.fits ? v.reason : `does not fit: ${v.reason}`}</span>
            </label>
          ))}
        </fieldset>
        <div class="options">
          <label>
            Mode
            <select name="mode" defaultValue="live">
              <option value="live">live</option>
              <option value="cold">cold</option>
            </select>
          </label>
          <label>
            Storage
            <select name="storage" defaultValue="auto">
              <option value="auto">auto</option>
              <option value="shared">shared</option>
              <option value="copy">copy</option>
            </select>
          </label>
          <label>
            Post-copy
            <select name="postcopy" defaultValue="never">
              <option value="never">never</option>
              <option value="auto">auto</option>
              <option value="always">always</option>
            </select>
          </label>
          <label>
            Downtime budget
            <input name="maxDowntime" placeholder="300ms" />
          </label>
          <label>
            Bandwidth (per second, 0 = no limit)
            <input name="bandwidth" placeholder="0" />
          </label>
          <label>
            Deadline
            <input name="deadline" placeholder="10m" />
          </label>
          <label>
            Multifd channels
            <input name="multifd" type="number" min={0} max={16} placeholder="0" />
          </label>
          <label class="check">
            <input type="checkbox" name="tls" defaultChecked /> TLS
          </label>
          <label class="check">
            <input type="checkbox" name="autoConverge" /> Auto-converge
          </label>
          <label class="check">
            <input type="checkbox" name="xbzrle" /> XBZRLE
          </label>
        </div>
        {error && (
          <p role="alert" class="error">
            {error}
          </p>
        )}
        <div class="actions">
          <button type="button" class="secondary" onClick={() => dialog.current?.close()}>
            Close
          </button>
          <button type="submit" disabled={busy}>
            Start migration
          </button>
        </div>
      </form>
    </dialog>
  );
}
