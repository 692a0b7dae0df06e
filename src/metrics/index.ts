// Prometheus metrics of the controller and the agent: one registry per
// daemon and a `GET /metrics` endpoint each (metricsListen option).
export { AgentMetrics, AGENT_FAULT_OUTCOMES, type AgentView } from './agent-metrics.js';
export { ControllerMetrics } from './controller-metrics.js';
export {
  DEFAULT_AGENT_METRICS_PORT,
  DEFAULT_CONTROLLER_METRICS_PORT,
  parseMetricsListen,
  startMetricsEndpoint,
  type MetricsEndpoint,
} from './endpoint.js';
export { MeteredDevice, VdiskIoStats } from './metered-device.js';
export { LATENCY_BUCKETS, newRegistry } from './registry.js';
