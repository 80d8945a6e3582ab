/**
 * spacelock-client: lease locks over Redis/Valkey with the spacelock module,
 * for ioredis. See README.md.
 *
 * @packageDocumentation
 */
export {
  SpaceLock,
  isSkipped,
  type Outcome,
  type Ran,
  type Skipped,
  type NotAcknowledged,
  type SkipReason,
  type ExistingSkipped,
  type CloseOptions,
} from './space-lock';
export { SpaceLockDropIn } from './drop-in';
export { Lease } from './lease';
export type { CommandMode, LockHolder, LockInfo } from './commands';
export { FENCED_WRITE_SCRIPT, LUA_REFRESH_SCRIPT, LUA_RELEASE_SCRIPT } from './commands';
export type { SpaceLockLogger, SpaceLockOptions, WithSpaceLockOptions } from './options';
export type { RedisConnection } from './connection';
export {
  SpaceLockError,
  ModuleNotLoadedError,
  CommandTimeoutError,
  LeaseLostError,
  NotAcknowledgedError,
  WrongModeError,
  type LostReason,
} from './errors';
