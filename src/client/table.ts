/** Plain-text tables, as the CLI and the benchmark reports print them: aligned columns, declared as data. */

/** Aligned columns, header first (unless `headers: false`); cells are printed as given. */
export function formatTable(header: string[], rows: string[][], opts: { headers?: boolean } = {}): string {
  const all = opts.headers === false ? rows : [header, ...rows];
  const widths = header.map((_, i) => Math.max(0, ...all.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return all.map(line).join('\n');
}

/** One column of a list: its header, how a row shows in it, and whether only `-o wide` shows it. */
export interface Column<T> {
  header: string;
  cell: (row: T) => string;
  wide?: boolean;
}

export interface TableOptions {
  /** Also the columns marked `wide`. */
  wide?: boolean;
  headers?: boolean;
}

/** A list as a table of the declared columns. */
export function renderTable<T>(columns: readonly Column<T>[], items: readonly T[], opts: TableOptions = {}): string {
  const shown = columns.filter((c) => opts.wide === true || c.wide !== true);
  return formatTable(
    shown.map((c) => c.header),
    items.map((it) => shown.map((c) => c.cell(it))),
    opts.headers === undefined ? {} : { headers: opts.headers },
  );
}
