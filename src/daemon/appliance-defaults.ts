// The embedded defaults of `tabula up` (docs/architecture.md, "Names other tools rely on"), apart from the
// appliance itself so the CLI can show them without loading the daemons.
export const APPLIANCE_DEFAULTS = {
  data: './data',
  controllerListen: '127.0.0.1:7360',
  portal: '127.0.0.1:3260',
  agentName: 'local',
  vdisk: 'disk0',
  size: 1024 ** 3,
  lun: 0,
} as const;
