/**
 * TypeBox schemas of the REST API's bodies and parameters; @fastify/swagger turns them into OpenAPI (inline,
 * where the API fuzzing of fuzz.test.ts reads them). What the API answers is in responses.ts.
 */
import Type from 'typebox';
import { NAME_RE } from '../../common/units.ts';
import { EVACUATIONS } from '../../common/spec.ts';

export const Name = Type.String({ pattern: NAME_RE.source, description: 'a Ferry name: [a-z0-9][a-z0-9-]{0,62}' });
export const NameParams = Type.Object({ name: Name });

export const Size = Type.Union([Type.String({ pattern: '^\\s*\\d+(\\.\\d+)?\\s*[a-zA-Z]*\\s*$', maxLength: 32 }), Type.Integer({ minimum: 1 })], {
  description: "bytes, or a size with a unit: '256M', '1G'",
});


export const JoinTokenRequest = Type.Object(
  { ttlSeconds: Type.Optional(Type.Integer({ minimum: 10, maximum: 7 * 86_400 })) },
  { additionalProperties: false },
);

// The join is part of the agent protocol: its shapes live with the other wire types.
export { JoinRequest, RenewRequest } from '../../common/protocol.ts';

export const CreateVm = Type.Object(
  {
    name: Name,
    memory: Type.Optional(Size),
    vcpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    host: Type.Optional(Name),
    disk: Type.Optional(Size),
    image: Type.Optional(
      Type.String({ pattern: '^(tiny|/[A-Za-z0-9._/-]+|[a-z0-9][a-z0-9-]{0,62})$', description: '`tiny`, a directory with vmlinuz + initramfs.gz, or the name of an imported disk image' }),
    ),
    network: Type.Optional(Name),
    diskImage: Type.Optional(
      Type.String({ pattern: '^/[A-Za-z0-9._/-]+$', maxLength: 4096, description: 'boot from this qcow2 or raw disk (absolute path every host sees), under an overlay of the VM' }),
    ),
    shared: Type.Optional(
      Type.Boolean({ description: 'diskImage is on shared storage: the VM disk is that file itself (no overlay), never copied by a migration; with image tiny it is a data disk' }),
    ),
    kernel: Type.Optional(Type.String({ maxLength: 4096, description: 'direct kernel boot: absolute path of the kernel' })),
    initrd: Type.Optional(Type.String({ maxLength: 4096, description: 'direct kernel boot: absolute path of the initrd' })),
    // No pattern here: a bad command line is FERRY_E_BAD_CMDLINE from the service, not a schema error.
    append: Type.Optional(Type.String({ maxLength: 2048, description: 'direct kernel boot: the kernel command line, as given' })),
    ip: Type.Optional(Type.String({ maxLength: 32, description: 'the address to reserve on the VM network, A.B.C.D/LEN' })),
    evacuation: Type.Optional(Type.Enum(EVACUATIONS, { description: 'how far a drain may go to move it: live (default), postcopy-ok, cold-ok (stopping the guest)' })),
    guestAgent: Type.Optional(Type.Boolean({ description: "a qemu-guest-agent port (default: true with diskImage)" })),
    cloudInit: Type.Optional(Type.Boolean({ description: 'attach a cloud-init NoCloud seed (implied by sshKeys, userData, hostname)' })),
    hostname: Type.Optional(Name),
    sshKeys: Type.Optional(Type.Array(Type.String({ maxLength: 16384 }), { maxItems: 32, description: 'SSH public keys for the default user (the seed\'s public-keys)' })),
    userData: Type.Optional(Type.String({ description: 'cloud-init user-data, verbatim (at most 1 MiB)' })),
    waitReady: Type.Optional(
      Type.Boolean({ description: 'wait until the guest answers (default: true for the tiny guest, which answers in ~2 s; false otherwise)' }),
    ),
    readyTimeout: Type.Optional(
      Type.Union([Type.String({ maxLength: 32 }), Type.Integer({ minimum: 1 })], { description: 'how long waitReady waits, e.g. 90s (default 60s)' }),
    ),
  },
  { additionalProperties: false },
);

export const StopVm = Type.Object(
  { force: Type.Optional(Type.Boolean()), timeoutMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 600_000 })) },
  { additionalProperties: false },
);

export const GuestCommand = Type.Object(
  {
    command: Type.Union([Type.String({ minLength: 1, maxLength: 4096 }), Type.Array(Type.String({ maxLength: 1024 }), { minItems: 1, maxItems: 64 })]),
  },
  { additionalProperties: false },
);

export const EventsQuery = Type.Object({ after: Type.Optional(Type.Integer({ minimum: 0 })) });

/** The body of an action that takes no options (an empty POST is read as `{}`). */
export const NoOptions = Type.Object({}, { additionalProperties: false });

/** A page of a list by name: at most `limit` items (all without it), those after the name `after`. */
export const PageQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, description: 'at most this many (default: all)' })),
  after: Type.Optional(Type.String({ pattern: NAME_RE.source, description: 'only names after this one (the last name of the page before)' })),
});

/** GET /hosts: a page as PageQuery says, each host in full (default) or as a list shows it (`summary`). */
export const HostListQuery = Type.Object({
  ...PageQuery.properties,
  view: Type.Optional(
    Type.Enum(['full', 'summary'], {
      description: 'full (default): each host with its whole inventory; summary: the inventory reduced to what a list shows (HostSummary), less than half the bytes',
    }),
  ),
});
