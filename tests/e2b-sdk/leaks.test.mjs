// Resource hygiene: envd must release what finished commands, detached
// clients, stopped watchers and closed PTYs held (spec §5.3 "cancellation").
// Measured through envd's open file descriptors, seen from inside the sandbox.
import assert from 'node:assert/strict'
import { before, describe, test } from 'node:test'
import { FilesystemEventType } from 'e2b'
import { HOME, sandbox, sleep, uniq, waitFor } from './helpers.mjs'

describe('resource hygiene', () => {
  let sbx
  before(async () => {
    sbx = await sandbox()
  })

  /** Number of open fds of the envd process (as root, via /proc). */
  async function envdFds() {
    const r = await sbx.commands.run('ls /proc/$(pgrep -o -x envd)/fd | wc -l', { user: 'root' })
    const n = Number(r.stdout.trim())
    assert.ok(n > 0, `cannot count envd fds: ${JSON.stringify(r)}`)
    return n
  }

  test('no file descriptors leak across commands, detached streams, watchers and PTYs', { timeout: 60_000 }, async () => {
    await envdFds()
    const before = await envdFds()

    for (let i = 0; i < 40; i++) await sbx.commands.run(`echo ${i}`)
    for (let i = 0; i < 15; i++) {
      const h = await sbx.commands.run('sleep 20', { background: true, stdin: true, timeoutMs: 30_000 })
      await h.disconnect()
      await sbx.commands.kill(h.pid)
    }
    const dir = `${HOME}/${uniq('leak')}`
    await sbx.files.makeDir(dir)
    for (let i = 0; i < 20; i++) {
      const w = await sbx.files.watchDir(dir, () => {}, { timeoutMs: 30_000, recursive: i % 2 === 0 })
      await w.stop()
    }
    for (let i = 0; i < 8; i++) {
      const p = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {}, timeoutMs: 30_000 })
      await sbx.pty.kill(p.pid)
      await p.wait().catch(() => {})
    }
    await sbx.files.write(`${dir}/big.bin`, new Blob([new Uint8Array(4 * 1024 * 1024)]))
    for (let i = 0; i < 5; i++) {
      const ac = new AbortController()
      const s = await sbx.files.read(`${dir}/big.bin`, { format: 'stream', signal: ac.signal })
      const reader = s.getReader()
      await reader.read()
      await reader.cancel().catch(() => {})
      ac.abort()
    }
    await sbx.files.remove(dir)

    let after
    await waitFor(
      async () => {
        after = await envdFds()
        return after <= before + 4
      },
      { timeoutMs: 8_000, intervalMs: 500, what: () => `envd fds to return to ~${before} (now ${after})` },
    )
  })

  test('150 watch/stop cycles do not exhaust inotify; a new watch still works', { timeout: 60_000 }, async () => {
    const dir = `${HOME}/${uniq('inotify')}`
    await sbx.files.makeDir(`${dir}/a/b`)
    for (let i = 0; i < 150; i++) {
      const w = await sbx.files.watchDir(dir, () => {}, { timeoutMs: 30_000, recursive: true })
      await w.stop()
    }
    await sleep(200)
    const events = []
    const w = await sbx.files.watchDir(dir, (e) => events.push(e), { timeoutMs: 30_000, recursive: true })
    try {
      await sbx.files.write(`${dir}/a/b/final.txt`, 'x')
      await waitFor(() => events.some((e) => e.type === FilesystemEventType.CREATE && e.name === 'a/b/final.txt'), {
        what: () => `create event after many cycles (got ${JSON.stringify(events)})`,
      })
    } finally {
      await w.stop()
      await sbx.files.remove(dir)
    }
  })

  test('a burst of 300 file creations is reported completely', { timeout: 30_000 }, async () => {
    const dir = `${HOME}/${uniq('burst')}`
    await sbx.files.makeDir(dir)
    const created = new Set()
    const w = await sbx.files.watchDir(
      dir,
      (e) => {
        if (e.type === FilesystemEventType.CREATE) created.add(e.name)
      },
      { timeoutMs: 25_000 },
    )
    try {
      await sbx.commands.run(`cd ${dir} && for i in $(seq 1 300); do : > f$i; done`)
      await waitFor(() => created.size >= 300, { timeoutMs: 10_000, what: () => `300 create events (got ${created.size})` })
      for (const n of [1, 150, 300]) assert.ok(created.has(`f${n}`))
    } finally {
      await w.stop()
      await sbx.files.remove(dir)
    }
  })

  test('two watchers of one directory both receive events', { timeout: 20_000 }, async () => {
    const dir = `${HOME}/${uniq('twowatch')}`
    await sbx.files.makeDir(dir)
    const a = []
    const b = []
    const wa = await sbx.files.watchDir(dir, (e) => a.push(e), { timeoutMs: 15_000 })
    const wb = await sbx.files.watchDir(dir, (e) => b.push(e), { timeoutMs: 15_000, recursive: true })
    try {
      await sbx.files.write(`${dir}/shared.txt`, 'x')
      const seen = (list) => list.some((e) => e.type === FilesystemEventType.CREATE && e.name === 'shared.txt')
      await waitFor(() => seen(a) && seen(b), { what: () => `both watchers (a=${JSON.stringify(a)}, b=${JSON.stringify(b)})` })
      await wa.stop()
      await sbx.files.write(`${dir}/second.txt`, 'y')
      await waitFor(() => b.some((e) => e.name === 'second.txt'), { what: 'the remaining watcher to keep working' })
    } finally {
      await wa.stop()
      await wb.stop()
      await sbx.files.remove(dir)
    }
  })
})
