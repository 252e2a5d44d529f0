// Sandbox.list (order, startedAfter, template, paging across running and
// paused), snapshots (create, list newest first with paging and filters,
// create from one, delete twice) and sandbox logs through the unmodified
// e2b@2.51.0 against a real `capsule serve` (run.sh sets E2B_API_URL,
// E2B_SANDBOX_URL, E2B_DOMAIN and E2B_API_KEY).
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { after, describe, test } from 'node:test'
import { Sandbox } from 'e2b'

const CAPSULE_URL = process.env.CAPSULE_URL
if (!CAPSULE_URL || !process.env.E2B_SANDBOX_URL || process.env.E2B_DEBUG) {
  throw new Error('run this suite with tests/e2b-sdk/fullstack/run.sh')
}
const uniq = (p) => `${p}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`

const created = []
async function create(template = 'base', opts = {}) {
  const sbx = await Sandbox.create(template, { timeoutMs: 300_000, ...opts })
  created.push(sbx)
  return sbx
}
const snapshots = []
after(async () => {
  for (const sbx of created) await sbx.kill().catch(() => {})
  for (const id of snapshots) await Sandbox.deleteSnapshot(id).catch(() => {})
})

/** Every page of a paginator, checking that only the last has no token. */
async function allPages(paginator, maxPages = 20) {
  const items = []
  const sizes = []
  while (paginator.hasNext) {
    if (sizes.length === maxPages) throw new Error('paging does not end')
    const page = await paginator.nextItems()
    sizes.push(page.length)
    items.push(...page)
  }
  assert.equal(paginator.nextToken, undefined)
  return { items, sizes }
}

describe('Sandbox.list', () => {
  test('order, startedAfter, template and paging across running and paused', async () => {
    const tag = uniq('list')
    const a = await create('base', { metadata: { tag } })
    const b = await create('base', { metadata: { tag } })
    assert.equal(await a.pause(), true)
    const query = { metadata: { tag } }
    const ids = (list) => list.map((s) => s.sandboxId)

    // Newest first by default, running and paused alike.
    const { items: all } = await allPages(Sandbox.list({ query }))
    assert.deepEqual(ids(all), [b.sandboxId, a.sandboxId])
    assert.deepEqual(all.map((s) => s.state), ['running', 'paused'])
    assert.deepEqual(ids((await allPages(Sandbox.list({ query, order: 'desc' }))).items), [b.sandboxId, a.sandboxId])
    assert.deepEqual(ids((await allPages(Sandbox.list({ query, order: 'asc' }))).items), [a.sandboxId, b.sandboxId])

    // Pages of one: a token on the first, none on the last.
    for (const order of ['asc', 'desc']) {
      const { items, sizes } = await allPages(Sandbox.list({ query, order, limit: 1 }))
      assert.deepEqual(sizes, [1, 1])
      const want = order === 'asc' ? [a.sandboxId, b.sandboxId] : [b.sandboxId, a.sandboxId]
      assert.deepEqual(ids(items), want)
    }

    // startedAfter = a sandbox's startedAt includes it; a second later
    // excludes it.
    const startedA = all.find((s) => s.sandboxId === a.sandboxId).startedAt
    const startedB = all.find((s) => s.sandboxId === b.sandboxId).startedAt
    assert.ok(startedA instanceof Date && startedA <= startedB)
    assert.deepEqual(ids((await allPages(Sandbox.list({ query: { ...query, startedAfter: startedA } }))).items), [b.sandboxId, a.sandboxId])
    assert.deepEqual(ids((await allPages(Sandbox.list({ query: { ...query, startedAfter: startedB } }))).items), [b.sandboxId])
    assert.deepEqual(ids((await allPages(Sandbox.list({ query: { ...query, startedAfter: new Date(startedB.getTime() + 1000) } }))).items), [])

    // template: by name (the ID here), an unknown one lists nothing.
    assert.deepEqual(ids((await allPages(Sandbox.list({ query: { ...query, template: 'base' } }))).items), [b.sandboxId, a.sandboxId])
    assert.deepEqual(ids((await allPages(Sandbox.list({ query: { ...query, template: 'no-such-template' } }))).items), [])
    assert.deepEqual(ids((await allPages(Sandbox.list({ query: { ...query, template: 'minimal' } }))).items), [])

    // state filters still apply.
    assert.deepEqual(ids((await allPages(Sandbox.list({ query: { ...query, state: ['paused'] } }))).items), [a.sandboxId])
  })
})

describe('snapshots', () => {
  test('create, list newest first with filters and paging, create from it, delete twice', async () => {
    const src = await create()
    await src.files.write('/home/user/snap.txt', 'kept in the snapshot')
    const name = uniq('snap')
    const named = await src.createSnapshot({ name })
    snapshots.push(named.snapshotId)
    assert.ok(named.names.some((n) => n.includes(name)), JSON.stringify(named))
    assert.ok(named.names.includes(named.snapshotId))
    const unnamed = await src.createSnapshot()
    snapshots.push(unnamed.snapshotId)
    assert.notEqual(unnamed.snapshotId, named.snapshotId)
    assert.equal(await src.isRunning(), true)

    // Newest first: the latest on the first page.
    const first = await Sandbox.listSnapshots({ limit: 1 }).nextItems()
    assert.deepEqual(first.map((s) => s.snapshotId), [unnamed.snapshotId])
    const { items: mine, sizes } = await allPages(src.listSnapshots({ limit: 1 }))
    assert.deepEqual(mine.map((s) => s.snapshotId), [unnamed.snapshotId, named.snapshotId])
    assert.deepEqual(sizes, [1, 1])
    const byStatic = await Sandbox.listSnapshots({ sandboxId: src.sandboxId }).nextItems()
    assert.deepEqual(byStatic.map((s) => s.snapshotId), [unnamed.snapshotId, named.snapshotId])
    // Name filter, by name and by full name; an unknown one is empty.
    assert.deepEqual((await Sandbox.listSnapshots({ name }).nextItems()).map((s) => s.snapshotId), [named.snapshotId])
    assert.deepEqual((await Sandbox.listSnapshots({ name: named.snapshotId }).nextItems()).map((s) => s.snapshotId), [named.snapshotId])
    assert.deepEqual(await Sandbox.listSnapshots({ name: uniq('unknown') }).nextItems(), [])
    assert.deepEqual(await Sandbox.listSnapshots({ sandboxId: '0'.repeat(32) }).nextItems(), [])

    // A sandbox from the snapshot, by its snapshotID.
    const copy = await create(named.snapshotId)
    assert.equal(await copy.files.read('/home/user/snap.txt'), 'kept in the snapshot')

    // Delete (the ID holds '/' and ':', URL-encoded by the SDK): true,
    // then false; gone from the list.
    assert.equal(await Sandbox.deleteSnapshot(named.snapshotId), true)
    assert.equal(await Sandbox.deleteSnapshot(named.snapshotId), false)
    assert.deepEqual(await Sandbox.listSnapshots({ name }).nextItems(), [])
    assert.equal(await Sandbox.deleteSnapshot(unnamed.snapshotId), true)
    assert.deepEqual(await src.listSnapshots().nextItems(), [])
  })
})

describe('sandbox logs (the CLI\'s GET /sandboxes/{id}/logs; no SDK method calls it)', () => {
  test('console and lifecycle, kept after the kill', async () => {
    const sbx = await create()
    const marker = uniq('console')
    // Through the kernel's log, which prints on the serial console.
    await sbx.commands.run(`echo '<b>${marker}</b>' > /dev/kmsg`, { user: 'root', timeoutMs: 20_000 })
    const get = async (path) => {
      const res = await fetch(`${CAPSULE_URL}${path}`, { headers: { 'X-API-Key': process.env.E2B_API_KEY } })
      assert.equal(res.headers.get('content-type'), 'application/json')
      if (res.status === 200) assert.equal(res.headers.get('x-content-type-options'), 'nosniff')
      return { status: res.status, body: await res.json() }
    }
    let logs
    const deadline = Date.now() + 30_000
    for (;;) {
      logs = (await get(`/sandboxes/${sbx.sandboxId}/logs`)).body
      if (logs.logs.some((l) => l.line.includes(marker)) || Date.now() > deadline) break
      await new Promise((resolve) => setTimeout(resolve, 250))
    }
    assert.ok(logs.logs.some((l) => l.line.endsWith(`] <b>${marker}</b>`)), JSON.stringify(logs).slice(0, 2000))
    assert.ok(logs.logEntries.some((l) => l.fields.event === 'sandbox.create'))
    assert.equal(await sbx.kill(), true)
    const v2 = await get(`/v2/sandboxes/${sbx.sandboxId}/logs?search=${encodeURIComponent(marker)}`)
    assert.equal(v2.status, 200)
    assert.equal(v2.body.logs.length, 1)
    assert.ok(v2.body.logs[0].message.endsWith(`] <b>${marker}</b>`), v2.body.logs[0].message)
    assert.equal(v2.body.logs[0].fields.source, 'console')
    const events = (await get(`/v2/sandboxes/${sbx.sandboxId}/logs?direction=backward&limit=1`)).body.logs
    assert.equal(events[0].fields.event, 'sandbox.destroy')
    assert.equal((await get(`/v2/sandboxes/${'0'.repeat(32)}/logs`)).status, 404)
  })
})
