/**
 * `ferry events [--follow] [--type T] [--vm NAME] [--after SEQ]`: the controller's event log, read over its
 * SSE stream. Without --follow: what the server kept (after SEQ), then exit; with it: that, then every
 * event as it happens until Ctrl-C, reconnecting (without a gap) when the connection drops. With --json a
 * list of events as one document, or with --follow one JSON object per line (a stream has no end to wait
 * for).
 */
import type { Command } from 'commander';
import { FerryError } from '../../common/errors.ts';
import type { FerryEventJson } from '../../common/events.ts';
import { withClient } from '../../client/api.ts';
import { eventMatches, streamEvents, type EventFilter } from '../../client/events.ts';
import { clusterOptions, type ClusterFlags } from '../flags.ts';
import { action, printError } from '../output.ts';

interface EventsFlags extends ClusterFlags {
  follow?: boolean;
  type?: string[];
  vm?: string;
  after?: string;
}

const collect = (v: string, prev: string[] = []): string[] => [...prev, ...v.split(',').map((t) => t.trim()).filter(Boolean)];

/** A few words of an event's data: what a person scanning the log wants, not the whole document. */
function summary(e: FerryEventJson): string {
  const d = e.data;
  const parts: string[] = [];
  for (const [k, v] of Object.entries(d)) {
    if (v === null || v === undefined) continue;
    if (k === 'progress' && typeof v === 'object') {
      const p = v as { percent?: number; pass?: number };
      if (typeof p.percent === 'number') parts.push(`${p.percent.toFixed(0)}%`);
      if (typeof p.pass === 'number') parts.push(`pass ${p.pass}`);
    } else if (k === 'error' && typeof v === 'object') {
      const err = v as { code?: string };
      if (err.code) parts.push(err.code);
    } else if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') {
      parts.push(`${k}=${v}`);
    }
  }
  return parts.join(' ');
}

export function eventLine(e: FerryEventJson): string {
  return `${String(e.seq).padStart(6)} ${e.at} ${e.type} ${e.subject}${Object.keys(e.data).length ? `  ${summary(e)}` : ''}`;
}

export function registerEvents(program: Command): void {
  clusterOptions(
    program
      .command('events')
      .option('--follow', 'keep printing events as they happen (until Ctrl-C)')
      .option('--type <type>', 'only these types (repeat or comma-separate; `migration` means migration.*)', collect)
      .option('--vm <name>', "only events about this VM (its own, and its migrations')")
      .option('--after <seq>', 'start after this event number (default: all the server kept; with --follow: from now on)')
      .description("The controller's events: hosts, VMs, migrations"),
  ).action(async (f: EventsFlags, cmd: Command) => {
    // `action` finds the output flags where commander puts them: the options, then the command.
    if (!f.follow) return list(f, cmd);
    try {
      await follow(f);
      process.exitCode = 130;
    } catch (err) {
      process.exitCode = printError(err, f);
    }
  });
}

function afterFlag(f: EventsFlags): number | undefined {
  if (f.after === undefined) return f.follow ? undefined : 0;
  if (!/^\d+$/.test(f.after)) throw new FerryError('FERRY_E_BAD_INPUT', `Bad --after ${JSON.stringify(f.after)}: an event number (0 or more).`);
  return Number(f.after);
}

/** What the server kept, up to the end of its replay. */
const list = action(async (f: EventsFlags, _cmd: Command) => {
  const after = afterFlag(f);
  const filter: EventFilter = { types: f.type, vm: f.vm };
  const kept: FerryEventJson[] = [];
  await withClient(f, async (c) => {
    for await (const item of streamEvents(c, { after })) {
      if (item.kind === 'live') return;
      if (eventMatches(item.event, filter)) kept.push(item.event);
    }
  });
  return { json: kept, human: () => (kept.length === 0 ? 'no events' : kept.map(eventLine).join('\n')) };
});

/** Prints events as they come until Ctrl-C, which closes the stream (not a stack trace, not half a line). */
async function follow(f: EventsFlags): Promise<void> {
  const after = afterFlag(f);
  const filter: EventFilter = { types: f.type, vm: f.vm };
  const stop = new AbortController();
  const onInt = (): void => stop.abort();
  process.on('SIGINT', onInt);
  try {
    await withClient(f, async (c) => {
      for await (const item of streamEvents(c, { after, reconnect: true, signal: stop.signal })) {
        if (item.kind === 'live' || !eventMatches(item.event, filter)) continue;
        process.stdout.write((f.json ? JSON.stringify(item.event) : eventLine(item.event)) + '\n');
      }
    });
  } finally {
    process.off('SIGINT', onInt);
  }
}
