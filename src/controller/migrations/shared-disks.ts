/**
 * Shared disks in a migration, the controller's part: the source says how it sees each shared disk, and
 * prepare hands that to the destination, whose agent refuses a path it does not see or a file that
 * differs (src/agent/shared-disks.ts is the authority; nothing is decided here).
 */
import type { SharedDiskFingerprint } from '../../common/protocol.ts';
import type { VmSpec } from '../../common/spec.ts';
import type { AgentClient } from '../agent-client.ts';

/** The part of a prepare body that carries the source's fingerprints; empty for a VM without shared disks. */
export async function sharedDisksForPrepare(
  src: AgentClient,
  spec: VmSpec,
): Promise<{ sharedDisks?: SharedDiskFingerprint[] }> {
  if (!spec.disks.some((d) => d.shared)) return {};
  return { sharedDisks: await src.call('sharedDisks', { params: { name: spec.name } }) };
}
