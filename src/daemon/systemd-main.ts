// Entry point of the appliance's systemd units: node systemd-main.js ROLE [CONFIG].
import { serviceMain } from './systemd.js';

void serviceMain(process.argv.slice(2));
