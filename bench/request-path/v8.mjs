// Runs the airlock-request-path wasm command under Node's V8, the engine
// Envoy embeds: node v8.mjs MODULE DIR FILE (FILE inside DIR, which the
// module sees as /inputs).
import { WASI } from 'node:wasi';
import { readFileSync } from 'node:fs';

const [module, dir, file] = process.argv.slice(2);
const wasi = new WASI({
  version: 'preview1',
  args: ['airlock-request-path', `/inputs/${file}`],
  preopens: { '/inputs': dir },
  returnOnExit: true,
});
const instance = await WebAssembly.instantiate(
  await WebAssembly.compile(readFileSync(module)),
  wasi.getImportObject(),
);
process.exitCode = wasi.start(instance);
