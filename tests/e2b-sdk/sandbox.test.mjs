// Sandbox-level behaviour of the SDK in debug mode (spec §2) and the envd
// transport basics it relies on (spec §5, §7.1).
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'
import { Sandbox } from 'e2b'
import { DEBUG_SANDBOX_ID, ENVD_URL, sandbox } from './helpers.mjs'

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

  test('kill() and setTimeout() are no-ops in debug mode; envd keeps running', T, async () => {
    const sbx = await sandbox()
    await sbx.setTimeout(30_000)
    assert.equal(await sbx.kill(), true)
    assert.equal(await sbx.isRunning(), true)
  })
})
