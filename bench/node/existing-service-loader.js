// Runs the existing Lua-based SpaceLockService (bench/node/existing-service/,
// copied verbatim) without NestJS: .ts files are transpiled on require with the
// TypeScript compiler from clients/node's dev dependencies, and its imports of
// '@nestjs/common' and '@nestjs-labs/nestjs-ioredis' resolve to the tiny
// shims in bench/node/shims/. 'ioredis' resolves to clients/node's copy, so
// the existing service and the Node client run on the same ioredis.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const Module = require('node:module');

const clientDir = path.resolve(__dirname, '../../clients/node');
const ts = require(require.resolve('typescript', { paths: [clientDir] }));
const aliases = {
  '@nestjs/common': path.join(__dirname, 'shims/nestjs-common.ts'),
  '@nestjs-labs/nestjs-ioredis': path.join(__dirname, 'shims/nestjs-ioredis.ts'),
  ioredis: require.resolve('ioredis', { paths: [clientDir] }),
};

const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  return resolve.call(this, aliases[request] ?? request, ...rest);
};

require.extensions['.ts'] = (module, filename) => {
  const out = ts.transpileModule(fs.readFileSync(filename, 'utf8'), {
    fileName: filename,
    compilerOptions: {
      module: ts.ModuleKind.CommonJS,
      target: ts.ScriptTarget.ES2022,
      experimentalDecorators: true,
      esModuleInterop: true,
    },
  });
  module._compile(out.outputText, filename);
};

/** The existing service's class, its RedisService shim, and ioredis. */
module.exports = {
  Redis: require(aliases.ioredis),
  RedisService: require('./shims/nestjs-ioredis.ts').RedisService,
  get SpaceLockService() {
    return require('./existing-service/services/space-lock.service.ts').SpaceLockService;
  },
  /** The Node client, built by `npm run build` in clients/node. */
  get client() {
    return require(path.join(clientDir, 'dist/index.js'));
  },
};
