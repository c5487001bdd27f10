/**
 * The console's entry: the sign-in form (the API token, checked against the server, kept in sessionStorage),
 * then the shell — navigation, the event stream's state, and the view the URL's hash names.
 */
import { render } from 'preact';
import { signal } from '@preact/signals';
import { useState } from 'preact/hooks';
import 'uplot/dist/uPlot.min.css';
import './app.css';
import { ApiError, call, forgetToken, saveToken, savedToken } from './api.ts';
import { followEvents } from './sse.ts';
import { connected, loadError, onEvent, reloadAll } from './store.ts';
import { ClusterView } from './views/cluster.tsx';
import { VmsView, VmView } from './views/vms.tsx';
import { MigrationsView, MigrationView } from './views/migrations.tsx';
import { HostView } from './views/host.tsx';
import { EventsView } from './views/events.tsx';

const token = signal<string | null>(savedToken());
const route = signal(location.hash.slice(1) || '/cluster');
addEventListener('hashchange', () => (route.value = location.hash.slice(1) || '/cluster'));

let stopStream: (() => void) | null = null;
function start(t: string): void {
  stopStream?.();
  stopStream = followEvents(t, {
    onEvent,
    onLive: reloadAll,
    onState: (c) => (connected.value = c),
    onUnauthorized: signOut,
  });
}

function signOut(): void {
  stopStream?.();
  stopStream = null;
  forgetToken();
  token.value = null;
}

function SignIn() {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const value = String(new FormData(e.currentTarget as HTMLFormElement).get('token') ?? '').trim();
    if (!value) return setError('Enter the API token.');
    setBusy(true);
    try {
      await call('GET', '/hosts', undefined, value);
      saveToken(value);
      token.value = value;
      start(value);
    } catch (err) {
      setError(
        err instanceof ApiError && err.status === 401
          ? 'The server refused this token (FERRY_E_UNAUTHORIZED). Use the token `ferry server` printed, or the one in your CLI config.'
          : `Could not reach the server: ${String((err as Error).message)}`,
      );
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">Ferry</h1>
        <p class="muted">Sign in with an API token.</p>
        <label for="token">API token</label>
        <input id="token" name="token" type="password" autocomplete="current-password" required autofocus />
        {error && (
          <p role="alert" class="error">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  );
}

const NAV = [
  ['/cluster', 'Cluster'],
  ['/vms', 'VMs'],
  ['/migrations', 'Migrations'],
  ['/events', 'Events'],
] as const;

function View({ path }: { path: string }) {
  const [, noun, id] = path.split('/').map(decodeURIComponent);
  if (noun === 'vms' && id) return <VmView name={id} />;
  if (noun === 'vms') return <VmsView />;
  if (noun === 'migrations' && id) return <MigrationView id={id} />;
  if (noun === 'migrations') return <MigrationsView />;
  if (noun === 'hosts' && id) return <HostView name={id} />;
  if (noun === 'events') return <EventsView />;
  return <ClusterView />;
}

function App() {
  if (!token.value) return <SignIn />;
  const path = route.value;
  return (
    <>
      <header class="top">
        <a class="brand" href="#/cluster">
          Ferry
        </a>
        <nav aria-label="Sections">
          {NAV.map(([href, label]) => (
            <a href={`#${href}`} aria-current={path.startsWith(href) ? 'page' : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <span class={`live ${connected.value ? 'on' : 'off'}`} role="status" aria-live="polite">
          {connected.value ? 'live' : 'reconnecting…'}
        </span>
        <button type="button" class="link" onClick={signOut}>
          Sign out
        </button>
      </header>
      {loadError.value && (
        <p class="error banner" role="alert">
          {loadError.value}
        </p>
      )}
      <main id="main">
        <View path={path} />
      </main>
    </>
  );
}

if (token.value) start(token.value);
render(<App />, document.getElementById('app')!);
