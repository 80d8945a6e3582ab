// Tiny stand-in for '@nestjs-labs/nestjs-ioredis': a RedisService that hands
// out one ioredis connection, as the existing service's module wiring does.
import type { Redis } from 'ioredis';

export class RedisService {
  constructor(private readonly redis: Redis) {}
  getOrThrow(): Redis {
    return this.redis;
  }
}
