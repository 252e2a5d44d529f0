// sandbox.files.watchDir against filesystem.Filesystem/WatchDir (spec §6.5, §9).
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'
import { FileNotFoundError, FileType, FilesystemEventType, InvalidArgumentError } from 'e2b'
import { HOME, rejection, sandbox, sleep, uniq, waitFor } from './helpers.mjs'

const T = { timeout: 30_000 }

/** Starts a watch that records events; returns { events, handle, waitEvent, stop }. */
async function watch(sbx, path, opts = {}) {
  const events = []
  const handle = await sbx.files.watchDir(path, (e) => events.push(e), { timeoutMs: 25_000, ...opts })
  const describeEvents = () => JSON.stringify(events.map((e) => `${e.type}:${e.name}`))
  return {
    events,
    handle,
    async waitEvent(type, name, timeoutMs = 5_000) {
      return waitFor(() => events.find((e) => e.type === type && e.name === name), {
        timeoutMs,
        what: () => `${type} event for ${name} (got ${describeEvents()})`,
      })
    },
    stop: () => handle.stop(),
  }
}

describe('watchDir', () => {
  let sbx
  let dir
  before(async () => {
    sbx = await sandbox()
    dir = `${HOME}/${uniq('watch')}`
    await sbx.files.makeDir(dir)
  })
  after(async () => {
    await sbx?.files.remove(dir).catch(() => {})
  })

  test('reports create, write and remove of a file', T, async () => {
    const d = `${dir}/basic`
    await sbx.files.makeDir(d)
    const w = await watch(sbx, d)
    try {
      await sbx.files.write(`${d}/file.txt`, 'one')
      await w.waitEvent(FilesystemEventType.CREATE, 'file.txt')
      await w.waitEvent(FilesystemEventType.WRITE, 'file.txt')
      const writes = w.events.filter((e) => e.type === FilesystemEventType.WRITE).length
      await sbx.files.write(`${d}/file.txt`, 'two, overwritten')
      await waitFor(() => w.events.filter((e) => e.type === FilesystemEventType.WRITE).length > writes, {
        what: 'a WRITE event for the overwrite',
      })
      await sbx.files.remove(`${d}/file.txt`)
      await w.waitEvent(FilesystemEventType.REMOVE, 'file.txt')
      assert.ok(w.events.every((e) => e.entry === undefined), 'entry must be absent without includeEntry')
    } finally {
      await w.stop()
    }
  })

  test('reports directory creation, rename and chmod', T, async () => {
    const d = `${dir}/kinds`
    await sbx.files.makeDir(d)
    const w = await watch(sbx, d)
    try {
      await sbx.files.makeDir(`${d}/subdir`)
      await w.waitEvent(FilesystemEventType.CREATE, 'subdir')
      await sbx.files.write(`${d}/a.txt`, 'a')
      await w.waitEvent(FilesystemEventType.CREATE, 'a.txt')
      await sbx.files.rename(`${d}/a.txt`, `${d}/b.txt`)
      await w.waitEvent(FilesystemEventType.RENAME, 'a.txt')
      await w.waitEvent(FilesystemEventType.CREATE, 'b.txt')
      await sbx.commands.run(`chmod 600 ${d}/b.txt`)
      await w.waitEvent(FilesystemEventType.CHMOD, 'b.txt')
    } finally {
      await w.stop()
    }
  })

  test('non-recursive watch ignores changes inside subdirectories', T, async () => {
    const d = `${dir}/flat`
    await sbx.files.makeDir(`${d}/sub`)
    const w = await watch(sbx, d)
    try {
      await sbx.files.write(`${d}/sub/nested.txt`, 'nested')
      await sbx.files.write(`${d}/top.txt`, 'top')
      await w.waitEvent(FilesystemEventType.CREATE, 'top.txt')
      await sleep(300)
      assert.ok(
        !w.events.some((e) => e.name.includes('nested.txt')),
        `unexpected nested events: ${JSON.stringify(w.events)}`,
      )
    } finally {
      await w.stop()
    }
  })

  test('recursive watch reports nested paths, including directories created later', T, async () => {
    const d = `${dir}/rec`
    await sbx.files.makeDir(`${d}/existing`)
    const w = await watch(sbx, d, { recursive: true })
    try {
      await sbx.files.write(`${d}/existing/one.txt`, '1')
      await w.waitEvent(FilesystemEventType.CREATE, 'existing/one.txt')
      await sbx.files.makeDir(`${d}/later`)
      await w.waitEvent(FilesystemEventType.CREATE, 'later')
      // Give the watcher a moment to add the new directory.
      await sleep(200)
      await sbx.files.write(`${d}/later/two.txt`, '2')
      await w.waitEvent(FilesystemEventType.CREATE, 'later/two.txt')
      await sbx.files.remove(`${d}/later/two.txt`)
      await w.waitEvent(FilesystemEventType.REMOVE, 'later/two.txt')
    } finally {
      await w.stop()
    }
  })

  test('includeEntry attaches EntryInfo to create/write events', T, async () => {
    const d = `${dir}/entries`
    await sbx.files.makeDir(d)
    const w = await watch(sbx, d, { includeEntry: true })
    try {
      await sbx.files.write(`${d}/e.txt`, 'entry!')
      await w.waitEvent(FilesystemEventType.WRITE, 'e.txt')
      const ev = await w.waitEvent(FilesystemEventType.CREATE, 'e.txt')
      assert.ok(ev.entry, `create event without entry: ${JSON.stringify(ev)}`)
      assert.equal(ev.entry.name, 'e.txt')
      assert.equal(ev.entry.path, `${d}/e.txt`)
      assert.equal(ev.entry.type, FileType.FILE)
      assert.equal(ev.entry.owner, 'user')
      await waitFor(
        () => w.events.some((e) => e.type === FilesystemEventType.WRITE && e.name === 'e.txt' && e.entry?.size === 6),
        { what: () => `a WRITE event whose entry has size 6 (got ${JSON.stringify(w.events)})` },
      )
    } finally {
      await w.stop()
    }
  })

  test('stop() ends the stream: no events afterwards', T, async () => {
    const d = `${dir}/stopped`
    await sbx.files.makeDir(d)
    const w = await watch(sbx, d)
    await sbx.files.write(`${d}/before.txt`, 'x')
    await w.waitEvent(FilesystemEventType.CREATE, 'before.txt')
    await w.stop()
    const n = w.events.length
    await sbx.files.write(`${d}/after.txt`, 'y')
    await sleep(500)
    assert.equal(w.events.length, n, `events after stop: ${JSON.stringify(w.events.slice(n))}`)
  })

  test('onExit is called when the watch ends at its timeout', T, async () => {
    const d = `${dir}/exit`
    await sbx.files.makeDir(d)
    let exited = false
    const handle = await sbx.files.watchDir(d, () => {}, {
      timeoutMs: 1_000,
      onExit: () => {
        exited = true
      },
    })
    try {
      await waitFor(() => exited, { timeoutMs: 5_000, what: 'onExit after the watch deadline' })
    } finally {
      await handle.stop()
    }
  })

  test('watching a missing directory throws FileNotFoundError', T, async () => {
    const err = await rejection(sbx.files.watchDir(`${dir}/nope`, () => {}, { timeoutMs: 5_000 }))
    assert.ok(err instanceof FileNotFoundError, `got ${err?.name}: ${err?.message}`)
  })

  test('watching a file throws InvalidArgumentError', T, async () => {
    await sbx.files.write(`${dir}/plain.txt`, 'x')
    const err = await rejection(sbx.files.watchDir(`${dir}/plain.txt`, () => {}, { timeoutMs: 5_000 }))
    assert.ok(err instanceof InvalidArgumentError, `got ${err?.name}: ${err?.message}`)
  })
})
