/**
 * The agent route contract (src/testing/agent-contract.case.ts) against the real agent: buildAgentApp and
 * the migration routes, with a fake VmHost and a migration host without QEMU. The fake agent runs the same
 * suite (src/testing/fake-agent.test.ts).
 */
import { agentContract, realAgent } from '../testing/agent-contract.case.ts';

agentContract('the real agent', realAgent);
