// controller.mirrors.rebuild-delay: the file key and the `--rebuild-delay`
// flag are one setting, validated once, and reach the controller in ms.
import { expect } from 'chai';
import { ConfigError, validateConfig } from '../../../src/config/schema.js';
import { flagOverrides } from '../../../src/config/flags.js';
import { CONTROLLER_FLAGS } from '../../../src/cli/controller.js';
import { controllerOptions } from '../../../src/daemon/options.js';

const ctx = { hostname: 'node7' };

function problems(raw: unknown): readonly string[] {
  try {
    validateConfig(raw, 'test.yaml', ctx);
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
}

describe('config: controller.mirrors.rebuild-delay', () => {
  it('unset: the controller default (no option at all)', () => {
    const c = validateConfig(null, 'test.yaml', ctx);
    expect(c.controller.mirrors).to.deep.equal({});
    expect(controllerOptions(c)).to.not.have.property('rebuildDelayMs');
  });

  it('seconds in the file, milliseconds to the controller; 0 means at once', () => {
    for (const s of [0, 45, 600]) {
      const c = validateConfig({ controller: { mirrors: { 'rebuild-delay': s } } }, 'test.yaml', ctx);
      expect(c.controller.mirrors.rebuildDelaySec).to.equal(s);
      expect(controllerOptions(c).rebuildDelayMs).to.equal(s * 1000);
    }
  });

  it('bad values and unknown keys are named', () => {
    expect(problems({ controller: { mirrors: { 'rebuild-delay': -1 } } })).to.deep.equal(['controller.mirrors.rebuild-delay: expected a whole number from 0 to 604800, got -1']);
    expect(problems({ controller: { mirrors: { 'rebuild-dely': 5 } } })[0]).to.match(/^controller\.mirrors\.rebuild-dely: unknown key/);
  });

  it('--rebuild-delay is the flag of that key', () => {
    expect(flagOverrides({ 'rebuild-delay': 30 }, CONTROLLER_FLAGS)).to.deep.equal({ 'controller.mirrors.rebuild-delay': 30 });
  });
});
