/**
 * The agent route contract (agent-contract.case.ts) against the fake agent of the controller's unit tests,
 * so that it answers what the real agent answers (src/agent/contract.test.ts runs the same suite on the
 * real one).
 */
import { agentContract, fakeAgent } from './agent-contract.case.ts';

agentContract('the fake agent', fakeAgent);
