import { expect } from 'chai';
import { validateConfig, type ConfigError } from '../../../src/config/schema.js';
import { controllerOptions } from '../../../src/daemon/options.js';

const ctx = { hostname: 'node7' };
const controller = (c: object): object => ({ role: 'controller', controller: { db: '/tmp/c.db', listen: '127.0.0.1:7360', ...c } });

function problems(raw: object): readonly string[] {
  try {
    validateConfig(raw, 't', ctx);
    return [];
  } catch (e) {
    return (e as ConfigError).problems ?? [(e as Error).message];
  }
}

describe('config: controller.durable-interval (issue 18)', () => {
  it('reaches the controller in ms; unset, the controller keeps its default', () => {
    expect(controllerOptions(validateConfig(controller({ 'durable-interval': 0.25 }), 't', ctx))).to.deep.include({ durableIntervalMs: 250 });
    expect(controllerOptions(validateConfig(controller({}), 't', ctx))).to.not.have.property('durableIntervalMs');
  });

  it('names a value out of range', () => {
    expect(problems(controller({ 'durable-interval': 61 })).some((p) => p.startsWith('controller.durable-interval: expected seconds from 0.001 to 60'))).to.equal(true);
    expect(problems(controller({ 'durable-interval': 0 })).some((p) => p.startsWith('controller.durable-interval'))).to.equal(true);
    expect(problems(controller({ 'durable-interval': 'soon' })).some((p) => p.startsWith('controller.durable-interval'))).to.equal(true);
  });
});
