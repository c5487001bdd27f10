/**
 * The migration engine, agent side: one file per concern, named after the phase or the thing it owns.
 *
 * ```mermaid
 * sequenceDiagram
 *   participant C as controller
 *   participant S as source agent
 *   participant D as destination agent
 *   C->>S: begin (GET /vms/:name: spec)
 *   C->>D: prepare: QEMU -incoming defer, capabilities, TLS creds, NBD exports, migrate-incoming
 *   D-->>C: {uri, nbd, tlsHostname}
 *   C->>S: perform: capabilities, parameters, mirrors until READY, migrate (background)
 *   loop every ~150 ms
 *     S->>S: query-migrate → progress model, stall watchdog
 *     C->>S: GET /migrations/:id (escalate: tune, postcopy, cancel)
 *   end
 *   C->>D: finish {success}: cont, nbd-server-stop, announce-self | kill + remove
 *   C->>S: confirm {success}: quit + remove | cont
 * ```
 *
 * - prepare.ts (destination), perform.ts (source), finish.ts (destination), confirm.ts (source)
 * - capabilities.ts: which switches each side sets; progress.ts: percent, rates, honest ETA, prediction
 * - storage.ts: NBD exports and disk mirrors; tls.ts: QEMU x509 credentials from the agent's identity
 * - cold.ts: stop/save, checksummed disk streams, start on the destination
 * - record.ts: the agent's per-migration record (survives agent restarts); types.ts: the wire contract
 * - states.ts, policy.ts: the controller's job states and escalation policy
 */
export * from './types.ts';
export { prepare, type PrepareOptions, type Prepared } from './prepare.ts';
export { startPerform, sourceVmOf, classifyFailure, SourceMigration, type PerformOptions, type SourceVm } from './perform.ts';
export { finish, type OutcomeOptions } from './finish.ts';
export { confirm } from './confirm.ts';
export { ProgressModel, predict, sampleFromQueryMigrate, toMigrationProgress, type ProgressView, type Prediction } from './progress.ts';
export { capabilityList, negotiateCapabilities, sourceParameters, destinationParameters, UNLIMITED_BANDWIDTH } from './capabilities.ts';
