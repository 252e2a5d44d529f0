// Wire-level checks of the Connect protocol details the SDK depends on but
// does not surface (spec §5.2, §5.3, §6.3): stream framing, keepalives,
// deadlines, string error codes, canonical JSON. Plain fetch, no SDK.
import assert from 'node:assert/strict'
import { before, describe, test } from 'node:test'
import { ENVD_URL, HOME, sandbox, uniq, waitFor } from './helpers.mjs'

const T = { timeout: 30_000 }

function envelope(msg) {
  const payload = Buffer.from(JSON.stringify(msg))
  const head = Buffer.alloc(5)
  head.writeUInt8(0, 0)
  head.writeUInt32BE(payload.length, 1)
  return Buffer.concat([head, payload])
}

/**
 * Calls a server-streaming RPC and collects its frames until the end-stream
 * frame (or `until` returns true for a message, after which the request is
 * aborted). Returns { status, frames: [{ flags, msg }], end, ms }.
 */
async function stream(method, msg, { headers = {}, until, timeoutMs = 15_000 } = {}) {
  const ac = new AbortController()
  const timer = setTimeout(() => ac.abort(), timeoutMs)
  const t0 = Date.now()
  const res = await fetch(`${ENVD_URL}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/connect+json', 'Connect-Protocol-Version': '1', ...headers },
    body: envelope(msg),
    signal: ac.signal,
  })
  const frames = []
  let end
  let buf = Buffer.alloc(0)
  try {
    if (res.status !== 200) return { status: res.status, body: await res.text(), frames, ms: Date.now() - t0 }
    for await (const chunk of res.body) {
      buf = Buffer.concat([buf, Buffer.from(chunk)])
      while (buf.length >= 5) {
        const len = buf.readUInt32BE(1)
        if (buf.length < 5 + len) break
        const flags = buf[0]
        const m = JSON.parse(buf.subarray(5, 5 + len).toString('utf8'))
        buf = buf.subarray(5 + len)
        frames.push({ flags, msg: m })
        if (flags & 2) end = m
        else if (until?.(m)) {
          ac.abort()
          return { status: res.status, frames, end, ms: Date.now() - t0 }
        }
      }
      if (end) break
    }
  } catch (err) {
    if (!ac.signal.aborted) throw err
    if (!until) throw new Error(`stream ${method} did not end within ${timeoutMs} ms: ${JSON.stringify(frames)}`)
  } finally {
    clearTimeout(timer)
  }
  return { status: res.status, frames, end, ms: Date.now() - t0 }
}

async function unary(method, msg, headers = {}) {
  const res = await fetch(`${ENVD_URL}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', ...headers },
    body: JSON.stringify(msg),
  })
  const text = await res.text()
  return { status: res.status, type: res.headers.get('content-type'), body: text ? JSON.parse(text) : undefined }
}

const basic = (user) => ({ Authorization: `Basic ${Buffer.from(`${user}:`).toString('base64')}` })
const bash = (cmd) => ({ process: { cmd: '/bin/bash', args: ['-c', cmd] }, stdin: false })
const events = (r) => r.frames.filter((f) => !(f.flags & 2)).map((f) => f.msg.event)

describe('Connect protocol (raw)', () => {
  before(async () => {
    await sandbox() // fails early with a clear message when envd is not there
  })

  test('Start: start{pid} first, data, end, then an empty end-stream frame', T, async () => {
    const r = await stream('process.Process/Start', bash('echo out; echo err >&2; exit 3'))
    assert.equal(r.status, 200)
    const ev = events(r)
    assert.ok(ev[0]?.start?.pid > 0, `first event ${JSON.stringify(ev[0])}`)
    const data = ev.filter((e) => e.data)
    assert.equal(Buffer.concat(data.filter((e) => e.data.stdout).map((e) => Buffer.from(e.data.stdout, 'base64'))).toString(), 'out\n')
    assert.equal(Buffer.concat(data.filter((e) => e.data.stderr).map((e) => Buffer.from(e.data.stderr, 'base64'))).toString(), 'err\n')
    const last = ev.at(-1)
    assert.deepEqual(last.end, { exitCode: 3, exited: true, status: 'exit status 3', error: 'exit status 3' })
    assert.deepEqual(r.end, {}, 'successful end-stream payload must be {}')
    assert.equal(r.frames.at(-1).flags, 2)
  })

  test('Start: exit 0 omits exitCode (proto3 default) and sets exited', T, async () => {
    const r = await stream('process.Process/Start', bash('true'))
    const end = events(r).at(-1).end
    assert.ok(end, JSON.stringify(r.frames))
    assert.equal(end.exitCode ?? 0, 0)
    assert.equal(end.exited, true)
    assert.equal(end.error, undefined)
  })

  test('Start: keepalive events at the Keepalive-Ping-Interval', T, async () => {
    const r = await stream('process.Process/Start', bash('sleep 2.6; echo done'), { headers: { 'Keepalive-Ping-Interval': '1' } })
    const keepalives = events(r).filter((e) => e.keepalive)
    assert.ok(keepalives.length >= 2, `expected ≥2 keepalives in 2.6 s, got ${keepalives.length}: ${JSON.stringify(r.frames)}`)
    assert.deepEqual(keepalives[0], { keepalive: {} })
    assert.ok(events(r).at(-1).end)
  })

  test('Start: Connect-Timeout-Ms kills the process and ends with deadline_exceeded', T, async () => {
    const marker = uniq('dl')
    const r = await stream('process.Process/Start', bash(`sleep 20; : ${marker}`), { headers: { 'Connect-Timeout-Ms': '700' } })
    assert.ok(r.ms < 5_000, `took ${r.ms} ms`)
    assert.equal(r.end?.error?.code, 'deadline_exceeded', JSON.stringify(r.frames.slice(-2)))
    // SIGKILL and reaping race with the end of the stream: allow a moment.
    await waitFor(async () => !JSON.stringify((await unary('process.Process/List', {})).body).includes(marker), {
      timeoutMs: 3_000,
      what: 'the process to be gone after its deadline',
    })
  })

  test('Start: a non-integer Connect-Timeout-Ms is invalid_argument', T, async () => {
    const r = await stream('process.Process/Start', bash('true'), { headers: { 'Connect-Timeout-Ms': 'soon' } })
    const code = r.end?.error?.code ?? (r.body ? JSON.parse(r.body).code : undefined)
    assert.equal(code, 'invalid_argument', JSON.stringify(r))
  })

  test('Start: an unknown user ends the stream with unauthenticated', T, async () => {
    const r = await stream('process.Process/Start', bash('true'), { headers: basic('ghost') })
    const err = r.end?.error ?? (r.body ? JSON.parse(r.body) : undefined)
    assert.equal(err?.code, 'unauthenticated', JSON.stringify(r))
    assert.match(err.message, /invalid username: 'ghost'/)
  })

  test('unary errors: HTTP status and string code', T, async () => {
    let r = await unary('filesystem.Filesystem/Stat', { path: '/no/such/path' })
    assert.equal(r.status, 404)
    assert.match(r.type ?? '', /^application\/json/)
    assert.equal(r.body.code, 'not_found')
    r = await unary('filesystem.Filesystem/Stat', { path: 'x' }, basic('ghost'))
    assert.equal(r.status, 401)
    assert.equal(r.body.code, 'unauthenticated')
    r = await unary('process.Process/SendSignal', { process: { pid: 1 }, signal: 'SIGNAL_UNSPECIFIED' })
    assert.equal(r.body?.code, 'unimplemented', JSON.stringify(r))
    r = await unary('filesystem.Filesystem/MakeDir', { path: HOME })
    assert.equal(r.status, 409)
    assert.equal(r.body.code, 'already_exists')
  })

  test('SendInput without an input member is unimplemented', T, async () => {
    const bg = await (await sandbox()).commands.run('sleep 10', { background: true, stdin: true, timeoutMs: 15_000 })
    try {
      const r = await unary('process.Process/SendInput', { process: { pid: bg.pid }, input: {} })
      assert.equal(r.body?.code, 'unimplemented', JSON.stringify(r))
    } finally {
      await bg.kill()
    }
  })

  test('EntryInfo JSON: int64 size as a string, enum names, RFC 3339 time', T, async () => {
    const sbx = await sandbox()
    const p = `${HOME}/${uniq('json')}.txt`
    await sbx.files.write(p, 'four')
    const r = await unary('filesystem.Filesystem/Stat', { path: p })
    assert.equal(r.status, 200)
    const e = r.body.entry
    assert.equal(e.size, '4')
    assert.equal(e.type, 'FILE_TYPE_FILE')
    assert.equal(e.mode, 0o644)
    assert.equal(e.permissions, '-rw-r--r--')
    assert.equal(e.owner, 'user')
    assert.match(e.modifiedTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$/)
    await sbx.files.remove(p)
  })

  test('WatchDir: {"start":{}} first, keepalives, and events as FilesystemEvent', T, async () => {
    const sbx = await sandbox()
    const dir = `${HOME}/${uniq('rawwatch')}`
    await sbx.files.makeDir(dir)
    let wrote = false
    const r = await stream(
      'filesystem.Filesystem/WatchDir',
      { path: dir },
      {
        headers: { 'Keepalive-Ping-Interval': '1' },
        timeoutMs: 10_000,
        until: (m) => {
          if (m.keepalive && !wrote) {
            wrote = true
            sbx.files.write(`${dir}/w.txt`, 'w').catch(() => {})
          }
          return m.filesystem?.name === 'w.txt'
        },
      },
    )
    assert.deepEqual(r.frames[0].msg, { start: {} })
    assert.ok(r.frames.some((f) => JSON.stringify(f.msg) === '{"keepalive":{}}'), JSON.stringify(r.frames))
    const ev = r.frames.find((f) => f.msg.filesystem)?.msg.filesystem
    assert.equal(ev.name, 'w.txt')
    assert.equal(ev.type, 'EVENT_TYPE_CREATE')
    await sbx.files.remove(dir)
  })

  test('Connect to a running process: start first, then live output', T, async () => {
    const sbx = await sandbox()
    const bg = await sbx.commands.run('read x; echo "live:$x"', { background: true, stdin: true, timeoutMs: 15_000 })
    let sent = false
    const r = await stream(
      'process.Process/Connect',
      { process: { pid: bg.pid } },
      {
        until: (m) => {
          if (m.event?.start && !sent) {
            sent = true
            sbx.commands.sendStdin(bg.pid, 'ok\n').catch(() => {})
          }
          return false
        },
      },
    )
    const ev = events(r)
    assert.equal(ev[0]?.start?.pid, bg.pid)
    const out = Buffer.concat(ev.filter((e) => e.data?.stdout).map((e) => Buffer.from(e.data.stdout, 'base64'))).toString()
    assert.equal(out, 'live:ok\n')
    assert.ok(ev.at(-1).end)
    assert.deepEqual(r.end, {})
  })
})
