/** One versioned step of the controller's schema (the list is in migrations.ts; parts may own their steps). */
import type { Database } from 'better-sqlite3';

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly up: (db: Database) => void;
}
