// Local stand-in for the seed project's constants file, which the copied
// service imports as '../git-sync.constants'. The bench sets the TTL per
// workload through the environment.
export const GIT_SYNC_LOCK_PREFIX = process.env.SEED_LOCK_PREFIX ?? 'git-sync:lock:';
export const GIT_SYNC_LOCK_TTL_MS = Number(process.env.SEED_LOCK_TTL_MS ?? 30_000);
