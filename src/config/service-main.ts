// Entry point of the appliance's systemd units: node service-main.js ROLE [CONFIG].
import { serviceMain } from './service.js';

void serviceMain(process.argv.slice(2));
