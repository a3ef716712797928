#!/usr/bin/env node
// Fan-out across several wsevents instances: --subs N subscribers spread round-robin over
// --ports P1,P2,..., one publisher (not a member) on the first port keeping --window W
// `message-all` broadcasts in flight. A broadcast is complete when all N subscribers got it.
// Prints "MARK start" / "MARK end" around the measured window and one "RESULT <json>" line.
// Bounded: warm-up + duration seconds, then it exits; --hardlimit kills it in any case.
'use strict'
const path = require('path')
const benchDir = process.env.WSEVENTS_BENCH_DIR || path.join(__dirname, '..', '..', 'shared', 'bench')
const WebSocket = require(path.join(benchDir, 'node_modules', 'ws'))

const args = { host: '127.0.0.1', ports: '', subs: 1000, window: 4, warmup: 2, duration: 8, room: 'bench', hardlimit: 120 }
for (let i = 2; i < process.argv.length; i++) {
  const k = process.argv[i].replace(/^--/, '')
  if (!(k in args)) { console.error(`unknown arg --${k}`); process.exit(2) }
  const v = process.argv[++i]
  args[k] = typeof args[k] === 'number' ? Number(v) : v
}
setTimeout(() => { console.error('fanout_multi: hard time limit reached'); process.exit(3) }, args.hardlimit * 1000).unref()
const ports = args.ports.split(',').map(Number).filter(Boolean)
if (!ports.length) { console.error('--ports is required'); process.exit(2) }
const ROOM = `/chat/rooms/${args.room}`
const PAYLOAD = { user: 'alice', room: 'bench', text: 'hello world, this is a benchmark payload', n: 12345, ok: true, tags: ['a', 'b'] }
const OPTS = { perMessageDeflate: false, skipUTF8Validation: true, handshakeTimeout: 10000 }

function open(port) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${args.host}:${port}/ws`, OPTS)
    ws.once('open', () => resolve(ws))
    ws.once('error', reject)
  })
}
function call(ws, msg) {
  return new Promise((resolve) => {
    const onMsg = (raw) => {
      const m = JSON.parse(raw)
      if (m.id === msg.id) { ws.off('message', onMsg); resolve(m) }
    }
    ws.on('message', onMsg)
    ws.send(JSON.stringify(msg))
  })
}

async function main() {
  const subs = []
  const perPort = ports.map(() => 0)
  for (let i = 0; i < args.subs; i++) {
    const k = i % ports.length
    const ws = await open(ports[k])
    const r = await call(ws, { event: 'subscribe', path: ROOM, id: 1 })
    if (!r.data || !r.data.subscribed) throw new Error('subscribe failed: ' + JSON.stringify(r))
    perPort[k]++
    subs.push(ws)
  }
  const pub = await open(ports[0])
  const got = new Map() // seq -> deliveries so far
  let delivered = 0, duplicates = 0, bad = 0, measuring = false, completed = 0, stopping = false
  let nextSeq = 1
  const seen = subs.map(() => new Set())
  subs.forEach((ws, idx) => ws.on('message', (raw) => {
    const m = JSON.parse(raw)
    if (m.event !== 'message' || m.path !== ROOM || !m.data) { bad++; return }
    const seq = m.data.seq
    if (seen[idx].has(seq)) { duplicates++; return }
    seen[idx].add(seq)
    if (seen[idx].size > 64) seen[idx].delete(seq - 64)
    if (measuring) delivered++
    const n = (got.get(seq) || 0) + 1
    if (n === args.subs) { got.delete(seq); if (measuring) completed++; if (!stopping) publish() } else got.set(seq, n)
  }))
  let id = 1
  pub.on('message', () => {})
  function publish() {
    const seq = nextSeq++
    pub.send(JSON.stringify({ event: 'message-all', path: ROOM, data: { seq, ...PAYLOAD }, id: id++ }))
  }
  for (let i = 0; i < args.window; i++) publish()
  await new Promise((r) => setTimeout(r, args.warmup * 1000))
  console.log('MARK start')
  measuring = true
  const t0 = performance.now()
  await new Promise((r) => setTimeout(r, args.duration * 1000))
  measuring = false
  const secs = (performance.now() - t0) / 1000
  console.log('MARK end')
  stopping = true
  console.log('RESULT ' + JSON.stringify({
    subs: args.subs, ports, per_port: perPort, seconds: secs,
    deliveries_per_s: delivered / secs, broadcasts_per_s: completed / secs,
    duplicates, bad,
  }))
  for (const ws of [...subs, pub]) ws.terminate()
  process.exit(0)
}
const { performance } = require('perf_hooks')
main().catch((e) => { console.error(e); process.exit(1) })
