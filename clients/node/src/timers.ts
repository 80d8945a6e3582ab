/**
 * Timers for delays of any length. Node fires a `setTimeout` whose delay is
 * above 2^31 − 1 ms (about 24.8 days) after 1 ms instead, with a warning: a
 * `waitMs: Number.MAX_SAFE_INTEGER` ("as long as it takes") would time out at
 * once, and a timer that re-arms itself for such a delay would spin.
 */

/** The longest delay `setTimeout` honours. */
export const MAX_TIMER_MS = 2_147_483_647;

/** A delay for a timer that re-checks its own deadline when it fires: whole ms, at least 1, at most {@link MAX_TIMER_MS}. */
export function timerDelay(ms: number): number {
  return Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(ms)));
}

/** A running {@link startTimer}. */
export interface Timer {
  clear(): void;
  /** Lets the process exit while the timer runs. */
  unref(): Timer;
}

/** Calls `fn` once `ms` have passed, for any `ms` (steps of at most {@link MAX_TIMER_MS}). */
export function startTimer(fn: () => void, ms: number): Timer {
  let remaining = Math.max(0, ms);
  let handle: NodeJS.Timeout | undefined;
  let unrefed = false;
  const arm = (): void => {
    const step = Math.min(remaining, MAX_TIMER_MS);
    remaining -= step;
    handle = setTimeout(remaining > 0 ? arm : fn, step);
    if (unrefed) handle.unref();
  };
  arm();
  const timer: Timer = {
    clear: () => clearTimeout(handle),
    unref: () => {
      unrefed = true;
      handle?.unref();
      return timer;
    },
  };
  return timer;
}
