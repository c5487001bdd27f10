/**
 * The controller's schema, as an ordered list of versioned migrations. Append a new entry to change the
 * schema; never edit one that has shipped. Each runs in its own transaction and is recorded in
 * `schema_migrations`, so a restart applies only what is missing. The SQL is SQLite's (STRICT tables);
 * PostgreSQL runs the same versions, translated by `postgresSql` (versions.ts).
 */
import type { Migration } from './versions.ts';
import { MIGRATION_JOBS_SCHEMA, MIGRATION_PROBE_SCHEMA, MIGRATION_QUEUE_SCHEMA, MIGRATION_TIMELINE_SCHEMA, MIGRATION_TRUTH_SCHEMA } from '../migrations/schema.ts';


export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'hosts, vms, networks, tokens, events',
    sql: `
        CREATE TABLE hosts (
          name         TEXT PRIMARY KEY,
          url          TEXT NOT NULL,
          state        TEXT NOT NULL,
          maintenance  INTEGER NOT NULL DEFAULT 0,
          inventory    TEXT,
          last_seen_at TEXT,
          joined_at    TEXT NOT NULL
        ) STRICT;
        CREATE TABLE vms (
          name       TEXT PRIMARY KEY,
          host       TEXT NOT NULL REFERENCES hosts(name),
          state      TEXT NOT NULL,
          spec       TEXT NOT NULL,
          boot_id    TEXT,
          ip         TEXT,
          created_at TEXT NOT NULL,
          updated_at TEXT NOT NULL
        ) STRICT;
        CREATE INDEX vms_host ON vms(host);
        CREATE TABLE networks (
          name    TEXT PRIMARY KEY,
          cidr    TEXT NOT NULL,
          gateway TEXT
        ) STRICT;
        CREATE TABLE ip_allocations (
          network TEXT NOT NULL REFERENCES networks(name) ON DELETE CASCADE,
          ip      TEXT NOT NULL,
          vm      TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
          PRIMARY KEY (network, ip),
          UNIQUE (network, vm)
        ) STRICT;
        CREATE TABLE join_tokens (
          id          TEXT PRIMARY KEY,
          secret_hash TEXT NOT NULL,
          created_at  TEXT NOT NULL,
          expires_at  TEXT NOT NULL,
          used_at     TEXT,
          used_by     TEXT
        ) STRICT;
        CREATE TABLE api_tokens (
          id          TEXT PRIMARY KEY,
          secret_hash TEXT NOT NULL,
          role        TEXT NOT NULL,
          created_at  TEXT NOT NULL
        ) STRICT;
        CREATE TABLE events (
          seq     INTEGER PRIMARY KEY AUTOINCREMENT,
          at      TEXT NOT NULL,
          type    TEXT NOT NULL,
          subject TEXT NOT NULL,
          data    TEXT NOT NULL
        ) STRICT;
      `,
  },
  MIGRATION_JOBS_SCHEMA,
  MIGRATION_TIMELINE_SCHEMA,
  MIGRATION_TRUTH_SCHEMA,
  {
    version: 5,
    name: 'vm readiness',
    // `running` says QEMU runs the guest; `ready` that the guest answered (issue #9). 0 for rows from before.
    sql: 'ALTER TABLE vms ADD COLUMN ready INTEGER NOT NULL DEFAULT 0',
  },
  {
    version: 6,
    name: 'image store',
    sql: `CREATE TABLE images (
        name         TEXT PRIMARY KEY,
        format       TEXT NOT NULL CHECK (format IN ('qcow2', 'raw')),
        virtual_size INTEGER NOT NULL,
        file_bytes   INTEGER NOT NULL,
        sha256       TEXT NOT NULL,
        path         TEXT NOT NULL UNIQUE,
        created_at   TEXT NOT NULL
      ) STRICT`,
  },
  MIGRATION_PROBE_SCHEMA,
  {
    version: 8,
    name: 'migration images',
    // What the destination did about each base image (present or fetched first); NULL for jobs from before.
    sql: 'ALTER TABLE migrations ADD COLUMN images TEXT',
  },
  {
    version: 9,
    name: 'controller lease',
    // One row: which controller leads, its term (what agents fence on, see leader.ts) and until when, in
    // milliseconds of the store's own clock, so that controllers on machines whose clocks differ agree.
    sql: `CREATE TABLE controller_lease (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        holder     TEXT NOT NULL,
        url        TEXT NOT NULL,
        term       INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
      ) STRICT;
      INSERT INTO controller_lease (id, holder, url, term, expires_at) VALUES (1, '', '', 0, 0)`,
  },
  MIGRATION_QUEUE_SCHEMA,
  {
    version: 11,
    name: 'vms by host with their load',
    // A host list sums the memory and vCPUs of each host's VMs: this index holds them beside the host and
    // the name, so that a page of 100 hosts reads an index range instead of a thousand specs (BENCHMARKS.md).
    sql: "CREATE INDEX vms_host_load ON vms(host, name, state, json_extract(spec, '$.memoryBytes'), json_extract(spec, '$.vcpus'))",
    postgres: "CREATE INDEX vms_host_load ON vms (host, name, state, ((spec::jsonb->>'memoryBytes')), ((spec::jsonb->>'vcpus')))",
  },
  {
    version: 12,
    name: 'vms generation',
    // A number that every change of a VM's row that a host list shows (its host, name, state, spec) raises,
    // kept by the database itself, so that host lists may keep VM loads while it stays the same — also
    // across controllers on one PostgreSQL. Heartbeats write the hosts table, not this.
    sql: `CREATE TABLE store_generation (
        name TEXT PRIMARY KEY,
        n    INTEGER NOT NULL
      ) STRICT;
      INSERT INTO store_generation (name, n) VALUES ('vms', 0);
      CREATE TRIGGER vms_generation_insert AFTER INSERT ON vms
        BEGIN UPDATE store_generation SET n = n + 1 WHERE name = 'vms'; END;
      CREATE TRIGGER vms_generation_delete AFTER DELETE ON vms
        BEGIN UPDATE store_generation SET n = n + 1 WHERE name = 'vms'; END;
      CREATE TRIGGER vms_generation_update AFTER UPDATE OF name, host, state, spec ON vms
        WHEN OLD.name IS NOT NEW.name OR OLD.host IS NOT NEW.host OR OLD.state IS NOT NEW.state OR OLD.spec IS NOT NEW.spec
        BEGIN UPDATE store_generation SET n = n + 1 WHERE name = 'vms'; END`,
    postgres: [
      'CREATE TABLE store_generation (name TEXT PRIMARY KEY, n BIGINT NOT NULL)',
      "INSERT INTO store_generation (name, n) VALUES ('vms', 0)",
      `CREATE FUNCTION vms_generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE store_generation SET n = n + 1 WHERE name = 'vms'; RETURN NULL; END $$`,
      'CREATE TRIGGER vms_generation_change AFTER INSERT OR DELETE ON vms FOR EACH STATEMENT EXECUTE FUNCTION vms_generation_bump()',
      `CREATE TRIGGER vms_generation_update AFTER UPDATE OF name, host, state, spec ON vms FOR EACH ROW
        WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.host IS DISTINCT FROM NEW.host OR OLD.state IS DISTINCT FROM NEW.state OR OLD.spec IS DISTINCT FROM NEW.spec)
        EXECUTE FUNCTION vms_generation_bump()`,
    ],
  },
];
