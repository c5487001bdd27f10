/**
 * The layers of Ferry, checked in `npm test` (scripts/test.sh): who may import whom. A part's folder is its
 * room; the arrows below are the only doors. Tests (`*.test.ts`) may reach across to build what they need;
 * production code never imports src/testing/.
 *
 *   common ← qemu ← agent            (the agent and its migration phases drive QEMU)
 *   common ← guest ← agent, controller (the controller only measures downtime from outside the guest)
 *   common ← controller               (never QMP, never the agent's code: it asks agents over the route table)
 *   common ← client ← lab, bench, cli (the public API, one client)
 *   web → common, types only         (the console runs in a browser and speaks only the public API)
 *   cli: the composition root (`ferry server`, `ferry agent`, `ferry lab`, `ferry bench` start those parts);
 *        the user-facing commands speak only the public API.
 */
const part = (name) => `^src/${name}/`;
const notTest = '\\.test\\.ts$';
const only = (name, allowed, comment) => ({
  name: `${name}-imports-only-${allowed.join('-') || 'itself'}`,
  comment,
  severity: 'error',
  from: { path: part(name), pathNot: notTest },
  to: { path: '^src/', pathNot: `^src/(${[name, ...allowed].join('|')})/` },
});

module.exports = {
  forbidden: [
    { name: 'no-circular', comment: 'No cycles: a part (and a module) never imports what imports it.', severity: 'error', from: {}, to: { circular: true } },
    only('common', [], 'Shared contracts import from no other part.'),
    only('qemu', ['common'], 'The QEMU driver knows nothing of agents, controllers or migrations.'),
    only('guest', ['common'], 'The guest toolkit is a library of its own.'),
    only('agent', ['common', 'qemu', 'guest'], 'The agent never imports the controller: it is told what to do over the route table.'),
    only('controller', ['common', 'guest'], 'The controller never touches QMP nor the agent code: it asks agents.'),
    only('client', ['common'], 'The API client speaks the public API only.'),
    only('lab', ['common', 'client'], 'The lab starts real processes and talks to them through the public API.'),
    only('bench', ['common', 'client', 'lab', 'qemu', 'guest'], 'Benchmarks build labs and may drive QEMU directly for baselines.'),
    {
      name: 'web-imports-only-common-types',
      comment: 'The web console (web/) runs in a browser: it takes only types from src/common/ and speaks the public API.',
      severity: 'error',
      from: { path: '^web/', pathNot: notTest },
      to: { path: '^src/', pathNot: '^src/common/' },
    },
    {
      name: 'web-takes-no-values-from-src',
      comment: 'What web/ imports from src/common/ is erased at build time: nothing of the server ships in the bundle.',
      severity: 'error',
      from: { path: '^web/', pathNot: notTest },
      to: { path: '^src/', dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'user-commands-speak-the-api',
      comment: 'ferry vm|host|migration|events talk to the controller through the public API client only.',
      severity: 'error',
      from: { path: '^src/cli/commands/(vm|host|migration|events)\\.ts$' },
      to: { path: '^src/', pathNot: '^src/(common|client|cli)/' },
    },
    {
      name: 'no-test-tooling-in-production',
      comment: 'src/testing/ (fakes, fault injector) is for tests only.',
      severity: 'error',
      from: { path: '^src/', pathNot: `^src/testing/|${notTest}` },
      to: { path: '^src/testing/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: 'node_modules' },
  },
};
