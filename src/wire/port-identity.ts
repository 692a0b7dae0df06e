// An agent's target port identity from its controller-given number
// (Welcome.agent_number), worked out the same way by the controller (for the
// port groups it sends) and by the agent (for its portals): the agent is
// target port group `number`, and its portal i (0-based) is relative target
// port and TPGT number * 16 + i + 1. Unique across agents, so the I_T nexus
// target port names ("<iqn>,t,0x<tpgt>") and VPD 0x83 differ per agent, and
// at most 16-bit (number <= 4095, at most 15 portals).

/** Portals an agent may have: the ids of agent n are n*16+1 .. n*16+15. */
export const MAX_AGENT_PORTALS = 15;

/** Relative target port id and TPGT of portal `index` of agent `number`. */
export function agentPortId(number: number, index: number): number {
  return number * 16 + index + 1;
}

/** Relative target port ids of an agent with `portals` portals. */
export function agentPortIds(number: number, portals: number): number[] {
  return Array.from({ length: Math.min(portals, MAX_AGENT_PORTALS) }, (_, i) => agentPortId(number, i));
}
