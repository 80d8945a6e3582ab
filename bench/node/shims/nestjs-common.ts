// Tiny stand-in for '@nestjs/common': just what space-lock.service.ts uses.
export function Injectable(): ClassDecorator {
  return () => undefined;
}

export class Logger {
  constructor(private readonly context = '') {}
  log(message: unknown): void {
    if (process.env.EXISTING_SERVICE_LOG) console.log(`[${this.context}] ${String(message)}`);
  }
  warn(message: unknown): void {
    console.warn(`[${this.context}] ${String(message)}`);
  }
  error(message: unknown): void {
    console.error(`[${this.context}] ${String(message)}`);
  }
}
