// Fork through the unmodified E2B JS SDK (npm e2b@2.51.0): sandbox.fork()
// and the static Sandbox.fork() against a real `capsule serve` (run.sh).
// The behaviours are those of the SDK's own fork tests: the fork inherits
// files and stays independent afterwards, count 2 gives distinct IDs, the
// static form works, and forking a killed sandbox raises
// SandboxNotFoundError; and beyond them, what makes forks distinct
// machines: a running process carried over, their own envd tokens,
// hostnames and RNG output.
import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { Sandbox, SandboxNotFoundError } from 'e2b'

if (!process.env.CAPSULE_URL || process.env.E2B_DEBUG) {
  throw new Error('run this suite with tests/e2b-sdk/fullstack/run.sh')
}
const TEMPLATE = 'base'

const created = []
const keep = (sbx) => {
  if (sbx instanceof Sandbox) created.push(sbx)
  return sbx
}
after(async () => {
  for (const sbx of created) {
    await sbx.kill().catch(() => {})
  }
})

const random16 = async (sbx) =>
  (await sbx.commands.run("head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")).stdout

describe('fork through capsule serve', () => {
  test('a fork inherits files and a running process, then stays independent', async () => {
    const src = keep(await Sandbox.create(TEMPLATE, { timeoutMs: 300_000 }))
    await src.files.write('/home/user/state.txt', 'before the fork')
    const proc = await src.commands.run('while :; do date +%s%N > /tmp/alive; sleep 0.1; done', { background: true })

    const [fork] = await src.fork({ timeoutMs: 120_000 })
    assert.ok(fork instanceof Sandbox, `the fork failed: ${fork}`)
    keep(fork)
    assert.notEqual(fork.sandboxId, src.sandboxId)
    assert.equal(await fork.files.read('/home/user/state.txt'), 'before the fork')
    // The source's process runs on in the fork.
    const alive = await fork.commands.run(`kill -0 ${proc.pid} && echo alive`)
    assert.equal(alive.stdout, 'alive\n')
    assert.equal((await fork.commands.run('echo $E2B_SANDBOX_ID')).stdout.trim(), fork.sandboxId)
    // The source runs on too, and the two diverge.
    assert.equal(await src.isRunning(), true)
    await fork.files.write('/home/user/state.txt', 'changed in the fork')
    await src.files.write('/home/user/only-source.txt', 'source')
    assert.equal(await src.files.read('/home/user/state.txt'), 'before the fork')
    assert.equal(await fork.files.exists('/home/user/only-source.txt'), false)
    assert.equal(await fork.files.read('/home/user/state.txt'), 'changed in the fork')
    await proc.kill()
  })

  test('count 2 gives two distinct sandboxes with their own identity', async () => {
    const src = keep(await Sandbox.create(TEMPLATE, { timeoutMs: 300_000 }))
    const forks = (await src.fork({ count: 2, timeoutMs: 120_000 })).map(keep)
    assert.equal(forks.length, 2)
    for (const f of forks) assert.ok(f instanceof Sandbox, `a fork failed: ${f}`)
    const ids = new Set([src.sandboxId, ...forks.map((f) => f.sandboxId)])
    assert.equal(ids.size, 3)
    const tokens = new Set([src, ...forks].map((s) => s.envdAccessToken))
    assert.equal(tokens.size, 3, 'every fork has its own envd access token')
    const rnd = await Promise.all([src, ...forks].map(random16))
    assert.equal(new Set(rnd).size, 3, `random bytes shared between forks: ${rnd}`)
    const hosts = await Promise.all(forks.map(async (f) => (await f.commands.run('hostname')).stdout.trim()))
    assert.deepEqual(hosts, forks.map((f) => f.sandboxId))
  })

  test('the static Sandbox.fork works', async () => {
    const src = keep(await Sandbox.create(TEMPLATE, { timeoutMs: 300_000 }))
    await src.files.write('/home/user/static.txt', 'static')
    const [fork] = (await Sandbox.fork(src.sandboxId, { timeoutMs: 120_000 })).map(keep)
    assert.ok(fork instanceof Sandbox, `the fork failed: ${fork}`)
    assert.equal(await fork.files.read('/home/user/static.txt'), 'static')
    const info = await fork.getInfo()
    assert.equal(info.sandboxId, fork.sandboxId)
    assert.equal(info.state, 'running')
  })

  test('forking a killed sandbox raises SandboxNotFoundError', async () => {
    const src = await Sandbox.create(TEMPLATE, { timeoutMs: 300_000 })
    await src.kill()
    await assert.rejects(src.fork(), SandboxNotFoundError)
    await assert.rejects(Sandbox.fork(src.sandboxId, { count: 2 }), SandboxNotFoundError)
  })
})
