// A minimal proxy-wasm host in Node, to see where the filter's own time goes
// in V8 by function: Envoy writes no perf map for its Wasm code, Node does
// (--perf-basic-prof). It drives the filter as Envoy does for one event
// request (context create, request headers, body in one chunk, response
// headers, done, delete), with host calls answered in JavaScript; what the
// host calls cost in Envoy is measured by scripts/bench --host-calls, not here.
//
//   node --no-liftoff --no-wasm-lazy-compilation --perf-basic-prof \
//     tools/v8-profile/host.cjs FILTER.wasm PLUGIN.json EVENTS.ndjson [REQUESTS]
//
// With COUNT_HOST_CALLS=1 it also prints how many times per request the
// filter called each host function (and the host called back into the
// module to allocate what it hands over): the crossings Envoy pays for.
// Deliveries are driven as Envoy drives them: a wake-up the filter queued
// reaches the root context (proxy_on_queue_ready) after the request, and
// every call it dispatched is answered at once with ANSWER_STATUS (204 unless
// set), headers only, before the next request.
//
// (see tools/v8-profile/README.md for perf and the table).
'use strict';
const fs = require('fs');

const [wasmPath, configPath, eventsPath, requestsArg] = process.argv.slice(2);
if (!eventsPath) {
  console.error('usage: host.cjs FILTER.wasm PLUGIN.json EVENTS.ndjson [REQUESTS]');
  process.exit(2);
}
const requests = Number(requestsArg || 200000);
const config = fs.readFileSync(configPath);
const events = fs.readFileSync(eventsPath, 'utf8').split('\n').filter((l) => l.trim()).map((l) => Buffer.from(l));

const OK = 0;
const NOT_FOUND = 1;
let instance;
const mem = () => new Uint8Array(instance.exports.memory.buffer);
const view = () => new DataView(instance.exports.memory.buffer);
const text = (ptr, len) => Buffer.from(instance.exports.memory.buffer, ptr, len).toString('utf8');

// Copies `bytes` into memory the module allocates, and writes where to the two out pointers.
function giveBytes(bytes, retPtr, retLen) {
  if (bytes.length) countCall('(host into module) proxy_on_memory_allocate');
  const ptr = bytes.length ? instance.exports.proxy_on_memory_allocate(bytes.length) : 0;
  if (bytes.length) mem().set(bytes, ptr);
  view().setUint32(retPtr, ptr, true);
  view().setUint32(retLen, bytes.length, true);
  return OK;
}

let requestHeaders = new Map();
let responseHeaders = new Map();
const answerHeaders = new Map([[':status', process.env.ANSWER_STATUS || '204'], ['content-length', '0']]);
let wakeUps = 0; // queued and not dequeued
const dispatched = []; // tokens of calls not answered yet
let body = Buffer.alloc(0);
const shared = new Map(); // key -> [value, cas]
const metrics = [];
let calls = 0;

const env = {
  proxy_log: (level, ptr, len) => { if (level >= 3) console.error(`[filter] ${text(ptr, len)}`); return OK; },
  proxy_get_log_level: (ret) => { view().setUint32(ret, 2, true); return OK; }, // info
  proxy_set_tick_period_milliseconds: () => OK,
  proxy_get_current_time_nanoseconds: (ret) => { view().setBigUint64(ret, process.hrtime.bigint(), true); return OK; },
  proxy_get_buffer_bytes: (type, start, max, retPtr, retLen) => {
    const buffer = type === 7 ? config : type === 0 ? body : null;
    if (!buffer) return NOT_FOUND;
    return giveBytes(buffer.subarray(start, start + max), retPtr, retLen);
  },
  proxy_get_header_map_value: (mapType, keyPtr, keyLen, retPtr, retLen) => {
    const map = mapType === 0 ? requestHeaders : mapType === 2 ? responseHeaders : mapType === 6 ? answerHeaders : new Map();
    const value = map.get(text(keyPtr, keyLen));
    if (value === undefined) return NOT_FOUND;
    return giveBytes(Buffer.from(value), retPtr, retLen);
  },
  proxy_get_header_map_pairs: (mapType, retPtr, retLen) => {
    const map = mapType === 0 ? requestHeaders : responseHeaders;
    const pairs = [...map].map(([k, v]) => [Buffer.from(k), Buffer.from(v)]);
    const size = 4 + pairs.length * 8 + pairs.reduce((n, [k, v]) => n + k.length + v.length + 2, 0);
    const out = Buffer.alloc(size);
    out.writeUInt32LE(pairs.length, 0);
    let at = 4;
    for (const [k, v] of pairs) { out.writeUInt32LE(k.length, at); out.writeUInt32LE(v.length, at + 4); at += 8; }
    for (const [k, v] of pairs) { k.copy(out, at); at += k.length + 1; v.copy(out, at); at += v.length + 1; }
    return giveBytes(out, retPtr, retLen);
  },
  proxy_get_property: () => NOT_FOUND,
  proxy_set_property: () => OK,
  proxy_define_metric: (type, namePtr, nameLen, ret) => {
    metrics.push(0);
    view().setUint32(ret, metrics.length - 1, true);
    return OK;
  },
  proxy_increment_metric: (id, offset) => { metrics[id] += Number(offset); return OK; },
  proxy_record_metric: () => OK,
  proxy_get_shared_data: (keyPtr, keyLen, retPtr, retLen, retCas) => {
    const entry = shared.get(text(keyPtr, keyLen));
    if (!entry) return NOT_FOUND;
    view().setUint32(retCas, entry[1], true);
    return giveBytes(entry[0], retPtr, retLen);
  },
  proxy_set_shared_data: (keyPtr, keyLen, valuePtr, valueLen, cas) => {
    const key = text(keyPtr, keyLen);
    const entry = shared.get(key);
    // As Envoy: a CAS is checked against a present key only; absent keys are created.
    if (entry && cas !== 0 && entry[1] !== cas) return 8; // CasMismatch
    shared.set(key, [Buffer.from(mem().subarray(valuePtr, valuePtr + valueLen)), (entry ? entry[1] : 0) + 1]);
    return OK;
  },
  proxy_register_shared_queue: (namePtr, nameLen, ret) => { view().setUint32(ret, 1, true); return OK; },
  proxy_resolve_shared_queue: () => NOT_FOUND,
  proxy_enqueue_shared_queue: () => { wakeUps += 1; return OK; },
  // The filter's wake-ups are empty values: Envoy hands them back without allocating.
  proxy_dequeue_shared_queue: (queue, retPtr, retLen) => {
    if (wakeUps === 0) return 7; // Empty
    wakeUps -= 1;
    return giveBytes(Buffer.alloc(0), retPtr, retLen);
  },
  proxy_http_call: (...args) => {
    calls += 1;
    dispatched.push(calls);
    view().setUint32(args[args.length - 1], calls, true);
    return OK;
  },
  proxy_set_effective_context: () => OK,
  proxy_done: () => OK,
  proxy_send_local_response: () => OK,
  proxy_continue_stream: () => OK,
  proxy_close_stream: () => OK,
  proxy_get_status: () => NOT_FOUND,
};
const wasi = {
  random_get: (ptr, len) => { mem().set(require('crypto').randomBytes(len), ptr); return 0; },
  environ_sizes_get: (count, size) => { view().setUint32(count, 0, true); view().setUint32(size, 0, true); return 0; },
  environ_get: () => 0,
  clock_time_get: (id, precision, ret) => { view().setBigUint64(ret, process.hrtime.bigint(), true); return 0; },
  fd_write: (fd, iovs, count, ret) => { view().setUint32(ret, 0, true); return 0; },
  proc_exit: (code) => { throw new Error(`proc_exit(${code})`); },
};

const wasmModule = new WebAssembly.Module(fs.readFileSync(wasmPath));
const imports = { env: {}, wasi_snapshot_preview1: {} };
for (const { module: from, name } of WebAssembly.Module.imports(wasmModule)) {
  const table = from === 'env' ? env : wasi;
  imports[from][name] = table[name] || (() => { throw new Error(`host call ${name} not implemented here`); });
}
// Crossings by name, counted over the requests only (not start-up).
const crossings = new Map();
const countingAsked = Boolean(process.env.COUNT_HOST_CALLS);
let counting = false;
const countCall = (name) => { if (counting) crossings.set(name, (crossings.get(name) || 0) + 1); };
if (countingAsked) {
  for (const table of Object.values(imports)) {
    for (const [name, call] of Object.entries(table)) {
      table[name] = (...args) => { countCall(name); return call(...args); };
    }
  }
}
instance = new WebAssembly.Instance(wasmModule, imports);
const x = instance.exports;
if (x._initialize) x._initialize();
x.proxy_on_context_create(1, 0);
if (!x.proxy_on_vm_start(1, 0)) throw new Error('vm start refused');
if (!x.proxy_on_configure(1, config.length)) throw new Error('configuration refused');

responseHeaders = new Map([[':status', '200'], ['content-length', '0']]);
const path = '/API/events/v1/events';
const start = process.hrtime.bigint();
counting = countingAsked;
for (let i = 0; i < requests; i++) {
  const context = 2 + i;
  body = events[i % events.length];
  requestHeaders = new Map([
    [':method', 'POST'], [':path', path], [':authority', 'platform'], ['content-type', 'application/json'],
    ['content-length', String(body.length)], ['x-request-id', `r-${i}`],
  ]);
  x.proxy_on_context_create(context, 1);
  x.proxy_on_request_headers(context, requestHeaders.size, 0);
  x.proxy_on_request_body(context, body.length, 1);
  x.proxy_on_response_headers(context, responseHeaders.size, 1);
  x.proxy_on_log(context);
  x.proxy_on_done(context);
  x.proxy_on_delete(context);
  // Each queued wake-up is announced once, as Envoy does; then the calls are answered.
  for (let n = wakeUps; n > 0; n--) x.proxy_on_queue_ready(1, 1);
  while (dispatched.length) x.proxy_on_http_call_response(1, dispatched.shift(), answerHeaders.size, 0, 0);
  if (i % 1000 === 999) x.proxy_on_tick(1);
}
const elapsed = Number(process.hrtime.bigint() - start) / 1e3;
console.log(`${requests} requests, ${(elapsed / requests).toFixed(2)} µs per request (host calls in JavaScript included); ${calls} calls made`);
if (crossings.size) {
  console.log('host calls per request:');
  for (const [name, n] of [...crossings].sort((a, b) => b[1] - a[1])) {
    console.log(`  ${(n / requests).toFixed(3).padStart(8)}  ${name}`);
  }
}
