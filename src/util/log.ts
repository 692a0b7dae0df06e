// Structured, levelled logging (winston): JSON lines when stderr is not a terminal.
import winston from 'winston';

const level = process.env.TABULA_LOG_LEVEL ?? (process.env.NODE_ENV === 'test' ? 'warn' : 'info');

export const log = winston.createLogger({
  level,
  format: process.stderr.isTTY
    ? winston.format.combine(winston.format.timestamp(), winston.format.colorize(), winston.format.simple())
    : winston.format.combine(winston.format.timestamp(), winston.format.json()),
  transports: [new winston.transports.Console({ stderrLevels: ['error', 'warn', 'info', 'http', 'verbose', 'debug', 'silly'] })],
});

export function setLogLevel(l: string): void {
  log.level = l;
}

/**
 * Whether debug lines are written: for guarding debug logs on hot paths
 * (winston formats what its level then drops). Two lookups, where winston's
 * own isDebugEnabled() walks its transports on every call.
 */
export function debugEnabled(): boolean {
  const configured = log.levels[log.level];
  const debug = log.levels.debug;
  return configured !== undefined && debug !== undefined && configured >= debug;
}

export type Logger = winston.Logger;
