// Build (or find in the cache) the end-to-end guest and print where it is:
//   npx tsx test/e2e/linux/build-guest.ts [--cluster]
// (--cluster: the image of the multipath/fstrim/snapshot scenarios; --multipath
// is an older name for it.)
// Also installs qemu-system-x86 when it is missing. The tests build the image
// themselves; this is for warming the cache (CI) and for poking at the guest.
import { buildGuestImage, ensureQemu, BASE_CONTENT, CLUSTER_CONTENT } from './guest-image.js';
import { log } from '../../../src/util/log.js';

const cluster = process.argv.includes('--cluster') || process.argv.includes('--multipath');
const progress = (m: string): void => {
  log.info(m);
};
const started = Date.now();
const qemu = await ensureQemu(progress);
const image = await buildGuestImage({ content: cluster ? CLUSTER_CONTENT : BASE_CONTENT, progress });
log.info(`guest image ready in ${Date.now() - started} ms (${image.cached ? 'cached' : 'built'})`, {
  qemu,
  kernel: image.kernel,
  initrd: image.initrd,
  kernelRelease: image.kernelRelease,
  modules: image.modules.length,
  packages: image.packages.length,
});
process.stdout.write(`${image.kernel}\n${image.initrd}\n`);
