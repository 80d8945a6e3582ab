// Local stand-in for the constants file of the existing service's project,
// which the copied service imports as '../git-sync.constants'. The bench sets
// the TTL per workload through the environment.
export const GIT_SYNC_LOCK_PREFIX = process.env.EXISTING_SERVICE_LOCK_PREFIX ?? 'git-sync:lock:';
export const GIT_SYNC_LOCK_TTL_MS = Number(process.env.EXISTING_SERVICE_LOCK_TTL_MS ?? 30_000);
