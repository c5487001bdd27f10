import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmStatus } from '../common/protocol.ts';
import { defaultVmSpec } from '../common/spec.ts';
import { createAgentMetrics } from './metrics.ts';

const vm = (name: string, state: VmStatus['state'], pid: number | null): VmStatus => ({
  name,
  state,
  qemuStatus: state === 'running' ? 'running' : null,
  pid,
  bootId: null,
  spec: defaultVmSpec(name),
  startedAt: null,
});

test("the agent's metrics: QEMU processes, each VM's state, phase durations, build info", async () => {
  const vms = [vm('a1', 'running', 101), vm('a2', 'stopped', null)];
  const m = createAgentMetrics(async () => vms);
  m.phaseDone('prepare', 'ok', 1500);
  m.phaseDone('perform', 'FERRY_E_DESTINATION_LOST', 300);
  const text = await m.registry.metrics();
  assert.match(text, /^ferry_agent_qemu_processes 1$/m);
  assert.match(text, /^ferry_agent_vms\{state="running"\} 1$/m);
  assert.match(text, /^ferry_agent_vms\{state="migrating"\} 0$/m);
  assert.match(text, /^ferry_agent_vm_state\{vm="a1",state="running",qemu_status="running"\} 1$/m);
  assert.match(text, /^ferry_agent_vm_state\{vm="a2",state="stopped",qemu_status="none"\} 1$/m);
  assert.match(text, /^ferry_agent_vm_memory_bytes\{vm="a1"\} \d+$/m);
  assert.match(text, /^ferry_agent_migration_phase_duration_seconds_count\{phase="prepare",result="ok"\} 1$/m);
  assert.match(text, /^ferry_agent_migration_phase_duration_seconds_sum\{phase="perform",result="FERRY_E_DESTINATION_LOST"\} 0.3$/m);
  assert.match(text, /^ferry_build_info\{component="agent",.*\} 1$/m);
  assert.match(text, /^# TYPE process_cpu_seconds_total counter$/m);
  // A VM that went away leaves no series behind.
  vms.pop();
  assert.doesNotMatch(await m.registry.metrics(), /vm="a2"/);
});
