// Runs a wasm32-wasip1 command module in Node's WASI (`/` opened to it). The
// main crate's proxy-wasm imports (module `env`) are defined as traps: the
// scan never calls the host. `_initialize` (the cdylib's) is left out so
// that WASI runs `_start`.
import { readFileSync } from 'node:fs';
import { WASI } from 'node:wasi';

const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env: process.env, preopens: { '/': '/' }, returnOnExit: true });
const module = await WebAssembly.compile(readFileSync(file));
const imports = wasi.getImportObject();
imports.env = {};
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.module === 'env') imports.env[imp.name] = () => { throw new Error(`host call ${imp.name}`); };
}
const instance = await WebAssembly.instantiate(module, imports);
const { _initialize, ...exports } = instance.exports;
process.exitCode = wasi.start({ exports });
