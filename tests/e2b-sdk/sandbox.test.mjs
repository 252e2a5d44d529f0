// Sandbox-level behaviour of the SDK in debug mode (spec §2) and the envd
// transport basics it relies on (spec §5, §7.1).
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { Sandbox } from 'e2b'
import { DEBUG_SANDBOX_ID, ENVD_URL, sandbox, waitFor } from './helpers.mjs'

const T = { timeout: 20_000 }

describe('sandbox (debug mode)', () => {
  test('Sandbox.create() makes no API call and returns the debug sandbox', T, async () => {
    const sbx = await Sandbox.create()
    assert.equal(sbx.sandboxId, DEBUG_SANDBOX_ID)
    const r = await sbx.commands.run('echo created')
    assert.equal(r.stdout, 'created\n')
  })

  test('Sandbox.connect(id) talks to envd on localhost:49983', T, async () => {
    const sbx = await sandbox()
    assert.equal(sbx.getHost(49983), 'localhost:49983')
    assert.equal(await sbx.isRunning(), true)
  })

  test('GET /health is 204 with no body and Cache-Control: no-store', T, async () => {
    const res = await fetch(`${ENVD_URL}/health`)
    assert.equal(res.status, 204)
    assert.equal(await res.text(), '')
    assert.equal(res.headers.get('cache-control'), 'no-store')
  })

  test('unary RPC errors carry string Connect codes', T, async () => {
    const res = await fetch(`${ENVD_URL}/process.Process/SendSignal`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1' },
      body: JSON.stringify({ process: { pid: 4_000_004 }, signal: 'SIGNAL_SIGKILL' }),
    })
    assert.equal(res.status, 404)
    const body = await res.json()
    assert.equal(body.code, 'not_found')
    assert.equal(typeof body.message, 'string')
  })

  test('process List over plain Connect JSON', T, async () => {
    const res = await fetch(`${ENVD_URL}/process.Process/List`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1' },
      body: '{}',
    })
    assert.equal(res.status, 200)
    const body = await res.json()
    assert.ok(body.processes === undefined || Array.isArray(body.processes), JSON.stringify(body))
  })

  test('CORS preflight is answered for browser SDK use', T, async () => {
    const res = await fetch(`${ENVD_URL}/process.Process/List`, {
      method: 'OPTIONS',
      headers: {
        Origin: 'https://example.test',
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'content-type,connect-protocol-version',
      },
    })
    assert.ok(res.status === 200 || res.status === 204, `status ${res.status}`)
    assert.ok(['*', 'https://example.test'].includes(res.headers.get('access-control-allow-origin')))
  })

  test('a server started by a background command is reachable at getHost(port)', T, async () => {
    const sbx = await sandbox()
    const port = 20_000 + Math.floor(Math.random() * 20_000)
    const h = await sbx.commands.run(`python3 -m http.server ${port} --bind 127.0.0.1`, { background: true, cwd: '/tmp', timeoutMs: 15_000 })
    try {
      const host = sbx.getHost(port)
      assert.equal(host, `localhost:${port}`)
      const res = await waitFor(
        async () => {
          const r = await fetch(`http://${host}/`)
          return r.status === 200 ? r : undefined
        },
        { timeoutMs: 10_000, intervalMs: 200, what: `python3 http.server on ${host}` },
      )
      assert.equal(res.status, 200)
    } finally {
      await h.kill()
    }
  })

  test('kill() and setTimeout() are no-ops in debug mode; envd keeps running', T, async () => {
    const sbx = await sandbox()
    await sbx.setTimeout(30_000)
    assert.equal(await sbx.kill(), true)
    assert.equal(await sbx.isRunning(), true)
  })
})

// POST /init is the control plane's call (spec §7.5); in debug mode nothing
// sends it, so the suite calls it itself and restores the state afterwards.
describe('envd /init and /envs', () => {
  const init = (body) =>
    fetch(`${ENVD_URL}/init`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) })
  const envs = async () => (await fetch(`${ENVD_URL}/envs`)).json()

  test('envVars become the global environment of new processes, replacing the previous set', T, async () => {
    const sbx = await sandbox()
    try {
      const res = await init({ envVars: { GLOBAL_A: 'a1', GLOBAL_B: 'b1' } })
      assert.equal(res.status, 204)
      assert.match(res.headers.get('x-envd-version') ?? '', /^\d+\.\d+\.\d+/)
      const e = await envs()
      assert.equal(e.GLOBAL_A, 'a1')
      assert.equal(e.GLOBAL_B, 'b1')
      let r = await sbx.commands.run('echo "$GLOBAL_A|$GLOBAL_B"')
      assert.equal(r.stdout, 'a1|b1\n')
      r = await sbx.commands.run('echo "$GLOBAL_A"', { envs: { GLOBAL_A: 'override' } })
      assert.equal(r.stdout, 'override\n', 'process envs win over global ones')
      assert.equal((await init({ envVars: { GLOBAL_B: 'b2' } })).status, 204)
      r = await sbx.commands.run('echo "${GLOBAL_A-unset}|$GLOBAL_B"')
      assert.equal(r.stdout, 'unset|b2\n')
    } finally {
      await init({ envVars: {} })
    }
    const e = await envs()
    assert.equal(e.GLOBAL_A, undefined)
    assert.equal(e.GLOBAL_B, undefined)
  })

  test('a request whose timestamp is not newer than the last applied one changes nothing', T, async () => {
    const sbx = await sandbox()
    // Slightly in the past: even an envd that syncs the clock (guest mode
    // only) leaves it alone when it leads the timestamp by less than 5 s.
    const t = Date.now() - 2_000
    try {
      assert.equal((await init({ envVars: { STAMPED: 'new' }, timestamp: new Date(t).toISOString() })).status, 204)
      assert.equal((await init({ envVars: { STAMPED: 'old' }, timestamp: new Date(t - 1_000).toISOString() })).status, 204)
      assert.equal((await sbx.commands.run('echo "$STAMPED"')).stdout, 'new\n')
    } finally {
      // No timestamp: always applies.
      await init({ envVars: {} })
    }
    assert.equal((await sbx.commands.run('echo "${STAMPED-unset}"')).stdout, 'unset\n')
  })

  test('defaultUser switches the user of requests that name none', T, async () => {
    const sbx = await sandbox()
    try {
      assert.equal((await init({ defaultUser: 'root' })).status, 204)
      assert.equal((await sbx.commands.run('whoami')).stdout, 'root\n')
      assert.equal((await sbx.files.write('who.txt', 'x')).path, '/root/who.txt')
    } finally {
      await init({ defaultUser: 'user' })
    }
    assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n')
  })

  test('undecodable JSON is a 400', T, async () => {
    const res = await fetch(`${ENVD_URL}/init`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{not json' })
    assert.equal(res.status, 400)
  })
})
