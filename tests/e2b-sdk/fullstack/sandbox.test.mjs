// The unmodified E2B JS SDK (npm e2b@2.51.0) against a real `capsule
// serve`: run.sh points E2B_API_URL (the API listener), E2B_SANDBOX_URL (the
// sandbox traffic listener) and E2B_DOMAIN at it.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import { after, describe, test } from 'node:test'
import { Sandbox } from 'e2b'

const CAPSULE_URL = process.env.CAPSULE_URL
const SANDBOX_URL = process.env.E2B_SANDBOX_URL
if (!CAPSULE_URL || !SANDBOX_URL || SANDBOX_URL === CAPSULE_URL || process.env.E2B_DEBUG) {
  throw new Error('run this suite with tests/e2b-sdk/fullstack/run.sh')
}
const TEMPLATE = 'base'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const uniq = (p) => `${p}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`

const created = []
async function create(opts = {}) {
  const sbx = await Sandbox.create(TEMPLATE, { timeoutMs: 300_000, ...opts })
  created.push(sbx)
  return sbx
}
after(async () => {
  for (const sbx of created) {
    await sbx.kill().catch(() => {})
  }
})

async function waitFor(fn, { timeoutMs = 30_000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      last = await fn()
      if (last) return last
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${last}`)
    await sleep(200)
  }
}

/** GET through the server's sandbox listener by host name, as a browser
 * would at http://{getHost(port)}/ once *.capsule.test resolves to the
 * server. */
function getViaHost(host, path = '/', headers = {}) {
  const url = new URL(SANDBOX_URL)
  return new Promise((resolve, reject) => {
    const req = http.request({ hostname: url.hostname, port: url.port, path, setHost: false,
      headers: { Host: host, ...headers } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

describe('sandbox lifecycle through capsule serve', () => {
  test('create with metadata and env vars, then commands and files', async () => {
    const tag = uniq('meta')
    const sbx = await create({ metadata: { suite: 'fullstack', tag }, envs: { GREETING: 'hello capsule' } })
    assert.match(sbx.sandboxId, /^[a-z0-9]+$/)
    const r = await sbx.commands.run('echo "$GREETING" && whoami && pwd')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'hello capsule\nuser\n/home/user\n')
    const fail = await sbx.commands.run('exit 7').catch((e) => e)
    assert.equal(fail.exitCode, 7)

    await sbx.files.write('notes/hello.txt', 'written by the SDK')
    assert.equal(await sbx.files.read('notes/hello.txt'), 'written by the SDK')
    const entries = await sbx.files.list('notes')
    assert.deepEqual(entries.map((e) => e.name), ['hello.txt'])
    assert.equal(await sbx.files.exists('/home/user/notes/hello.txt'), true)

    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.equal(info.state, 'running')
    assert.equal(info.metadata.tag, tag)
    assert.equal(info.templateId !== undefined || info.name !== undefined, true)

    // list with a metadata filter finds exactly it
    const page = await Sandbox.list({ query: { metadata: { tag } } }).nextItems()
    assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId])
  })

  test('signed download and upload URLs work on E2B_SANDBOX_URL (no routing headers)', async () => {
    const sbx = await create()
    await sbx.files.write('signed/in.txt', 'via a signed URL')
    const down = await sbx.downloadUrl('signed/in.txt', { useSignatureExpiration: 60 })
    assert.ok(down.startsWith(SANDBOX_URL + '/files?'), down)
    const res = await fetch(down)
    assert.equal(res.status, 200)
    assert.equal(await res.text(), 'via a signed URL')
    // a download, inert in a browser
    assert.equal(res.headers.get('content-disposition'), 'attachment; filename=in.txt')
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff')
    assert.match(res.headers.get('content-security-policy'), /^sandbox/)
    // the same URL on the API's origin serves no sandbox byte
    const onAPI = new URL(down)
    const api = new URL(CAPSULE_URL)
    onAPI.protocol = api.protocol
    onAPI.host = api.host
    const refused = await fetch(onAPI)
    const refusedBody = await refused.text()
    assert.equal(refused.status, 421, refusedBody)
    assert.ok(!refusedBody.includes('via a signed URL'), refusedBody)
    const up = await sbx.uploadUrl('signed/out.txt')
    const form = new FormData()
    form.append('file', new Blob(['uploaded with a signed URL']), 'out.txt')
    const put = await fetch(up, { method: 'POST', body: form })
    assert.equal(put.status, 200)
    assert.equal(await sbx.files.read('signed/out.txt'), 'uploaded with a signed URL')
    // a URL for another path does not read this one
    const other = new URL(down)
    other.searchParams.set('path', 'signed/out.txt')
    assert.notEqual((await fetch(other)).status, 200)
  })

  test('pty', async () => {
    const sbx = await create()
    let out = ''
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += new TextDecoder().decode(d) }, timeoutMs: 60_000 })
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo pty-$((6*7))\nexit\n'))
    await pty.wait().catch(() => {})
    assert.match(out, /pty-42/)
  })

  test('getMetrics', async () => {
    const sbx = await create()
    const metrics = await waitFor(async () => {
      const m = await sbx.getMetrics()
      return m.length > 0 ? m : null
    }, { what: 'a metrics sample' })
    const m = metrics[metrics.length - 1]
    assert.ok(m.cpuCount >= 1)
    assert.ok(m.memTotal > 0 && m.memUsed > 0 && m.memUsed <= m.memTotal)
    assert.ok(m.diskTotal > 0)
    assert.ok(m.timestamp instanceof Date && !Number.isNaN(m.timestamp.getTime()))
  })

  test('pause, then connect: memory intact (a background process keeps counting)', async () => {
    const sbx = await create()
    await sbx.commands.run(`bash -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.2; done'`, { background: true, timeoutMs: 0 })
    await sleep(1500)
    const before = Number((await sbx.files.read('/tmp/counter')).trim())
    assert.ok(before > 0)
    assert.equal(await sbx.pause(), true)
    assert.equal(await sbx.isRunning(), false)
    assert.equal((await sbx.getInfo()).state, 'paused')
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal(await again.isRunning(), true)
    const resumed = Number((await again.files.read('/tmp/counter')).trim())
    assert.ok(resumed >= before, `counter ${resumed} went back from ${before}`)
    await sleep(1000)
    const later = Number((await again.files.read('/tmp/counter')).trim())
    assert.ok(later > resumed, `counter stuck at ${later} after the resume`)
  })

  test('a background sleep started just before a pause is the same live process after the resume and finishes', async () => {
    const sbx = await create()
    const cmd = await sbx.commands.run('sleep 2 && echo done > f', { background: true })
    assert.equal(await sbx.pause(), true)
    const again = await Sandbox.connect(sbx.sandboxId)
    const resumed = Date.now()
    // The guest's clock stood still while it was paused, as a suspended
    // machine's: the sleep has its remaining time left, so it still runs.
    const running = await again.commands.list()
    assert.ok(running.some((p) => p.pid === cmd.pid), `pid ${cmd.pid} is not running after the resume: ${JSON.stringify(running)}`)
    // It finishes: about two seconds later on an idle machine (TCG runs a
    // freshly restored guest slowly, the more so on a loaded host).
    await waitFor(async () => (await again.files.read('f')) === 'done\n', { timeoutMs: 60_000, what: 'f, written by the sleeper' })
    const seen = Date.now()
    // When it was written: the file's mtime, on the guest's wall clock,
    // which the resume set to the host's (the same machine's clock as
    // Date.now() here); the rest until seen is this polling through the
    // proxy.
    const written = Math.round(Number((await again.commands.run('date +%s.%N -r f')).stdout.trim()) * 1000)
    console.log(`sleeper wrote f ${written - resumed} ms after the resume returned; seen ${seen - resumed} ms after it`)
    const handle = await again.commands.connect(cmd.pid)
    assert.equal((await handle.wait()).exitCode, 0)
  })

  test('getHost reaches a server started inside the sandbox (loopback only)', async () => {
    const sbx = await create()
    await sbx.files.write('/tmp/www/index.html', 'served from the sandbox')
    await sbx.commands.run('python3 -m http.server 3000 --bind 127.0.0.1 --directory /tmp/www', { background: true, timeoutMs: 0 })
    const host = sbx.getHost(3000)
    // the domain answered to the SDK carries the sandbox listener's port
    assert.equal(host, `3000-${sbx.sandboxId}.capsule.test:${new URL(SANDBOX_URL).port}`)
    const res = await waitFor(async () => {
      const r = await getViaHost(host)
      return r.status === 200 ? r : null
    }, { what: 'the server through the proxy' })
    assert.equal(res.body, 'served from the sandbox')
    // an unknown sandbox is E2B's 502
    const unknown = await getViaHost(`3000-${'0'.repeat(32)}.capsule.test`)
    assert.equal(unknown.status, 502)
    assert.equal(JSON.parse(unknown.body).message, 'The sandbox was not found')
  })

  test('setTimeout expiry kills the sandbox', async () => {
    const sbx = await create()
    await sbx.setTimeout(3_000)
    await waitFor(async () => !(await sbx.isRunning()), { timeoutMs: 30_000, what: 'the sandbox to stop' })
    // killed, not paused: it is gone for good
    await waitFor(async () => {
      try {
        await sbx.getInfo()
        return false
      } catch (e) {
        return e.name === 'SandboxNotFoundError' || /not found/i.test(e.message)
      }
    }, { timeoutMs: 15_000, what: 'getInfo to answer not found' })
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  })

  test('setTimeout expiry pauses a sandbox created with onTimeout pause', async () => {
    const sbx = await create({ lifecycle: { onTimeout: 'pause' } })
    await sbx.files.write('/tmp/kept', 'kept across the auto-pause')
    await sbx.setTimeout(3_000)
    await waitFor(async () => (await sbx.getInfo()).state === 'paused', { timeoutMs: 30_000, what: 'the auto-pause' })
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal(await again.files.read('/tmp/kept'), 'kept across the auto-pause')
  })

  test("onTimeout {action: 'pause', keepMemory: false}: the timeout's pause keeps the files only", async () => {
    const sbx = await create({ lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } })
    await sbx.files.write('/home/user/kept.txt', 'on the disk')
    await sbx.commands.run('echo in memory > /dev/shm/gone && sleep 100000', { background: true, timeoutMs: 0 })
    const info = await sbx.getInfo()
    assert.equal(info.lifecycle.onTimeout, 'pause')
    await sbx.setTimeout(2_000)
    await waitFor(async () => (await sbx.getInfo()).state === 'paused', { timeoutMs: 60_000, what: 'the auto-pause' })
    // The resume boots it cold from its disk: the files are there, the
    // memory (a tmpfs file, the sleeping process) is not.
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal(await again.files.read('/home/user/kept.txt'), 'on the disk')
    assert.equal(await again.files.exists('/dev/shm/gone'), false)
    const procs = await again.commands.list()
    assert.ok(!procs.some((p) => p.cmd.includes('sleep 100000') || (p.args || []).join(' ').includes('sleep 100000')), JSON.stringify(procs))
  })

  test("onTimeout {action: 'pause', keepMemory: false} with autoResume is refused by the SDK, and by the server", async () => {
    await assert.rejects(create({ lifecycle: { onTimeout: { action: 'pause', keepMemory: false }, autoResume: true } }), /keepMemory/)
    const res = await fetch(`${CAPSULE_URL}/v2/sandboxes`, {
      method: 'POST',
      headers: { 'X-API-KEY': process.env.E2B_API_KEY, 'Content-Type': 'application/json' },
      body: JSON.stringify({ templateID: TEMPLATE, autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } }),
    })
    assert.equal(res.status, 400)
  })

  test('setTimeout(5000): 6 s later isRunning() is false (a timer to the deadline, not a poll)', async () => {
    const sbx = await create()
    await sbx.setTimeout(5_000)
    await sleep(6_000)
    assert.equal(await sbx.isRunning(), false)
  })

  test('pause({keepMemory: false}) keeps the files only; connect boots it cold', async () => {
    const sbx = await create()
    await sbx.files.write('/home/user/kept.txt', 'on the disk')
    await sbx.commands.run('echo in memory > /dev/shm/gone && sleep 100000', { background: true, timeoutMs: 0 })
    assert.equal(await sbx.pause({ keepMemory: false }), true)
    assert.equal((await sbx.getInfo()).state, 'paused')
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal(await again.files.read('/home/user/kept.txt'), 'on the disk')
    assert.equal(await again.files.exists('/dev/shm/gone'), false)
    const procs = await again.commands.list()
    assert.ok(!procs.some((p) => p.cmd.includes('sleep 100000') || (p.args || []).join(' ').includes('sleep 100000')), JSON.stringify(procs))
  })

  test("connect with onResume: 'reboot' drops the kept memory, keeps the files", async () => {
    const sbx = await create()
    await sbx.files.write('/home/user/kept.txt', 'on the disk')
    await sbx.commands.run('echo in memory > /dev/shm/gone')
    assert.equal(await sbx.pause(), true)
    const again = await Sandbox.connect(sbx.sandboxId, { onResume: 'reboot' })
    assert.equal(await again.files.read('/home/user/kept.txt'), 'on the disk')
    assert.equal(await again.files.exists('/dev/shm/gone'), false)
  })

  test('network rules: create with allowOut/denyOut, updateNetwork, DNS through the platform', async () => {
    const { SandboxNotFoundError } = await import('e2b')
    const sbx = await create({ network: { allowOut: ['example.com', '*.pypi.org', '1.1.1.1'], denyOut: ['0.0.0.0/0'] } })
    let info = await sbx.getInfo()
    assert.deepEqual(info.network.allowOut, ['example.com', '*.pypi.org', '1.1.1.1'])
    assert.deepEqual(info.network.denyOut, ['0.0.0.0/0'])
    // The guest asks a DNS server of its choosing for a name the rules
    // deny: the platform's resolver answers NXDOMAIN (rcode 3) itself.
    const ask = `python3 -c "
import socket, struct
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(l)]) + l.encode() for l in 'denied.invalid'.split('.')) + b'\\x00' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(q, ('8.8.8.8', 53))
print('rcode', s.recv(512)[3] & 15)"`
    assert.match((await sbx.commands.run(ask)).stdout, /rcode 3/)
    await sbx.updateNetwork({ denyOut: ['198.51.100.0/24'] })
    info = await sbx.getInfo()
    assert.deepEqual(info.network.denyOut, ['198.51.100.0/24'])
    assert.equal(info.network.allowOut, undefined)
    assert.equal(info.allowInternetAccess, true)
    await assert.rejects(sbx.updateNetwork({ allowOut: ['not a name!'] }))
    assert.deepEqual((await sbx.getInfo()).network.denyOut, ['198.51.100.0/24'])
    await sbx.kill()
    await assert.rejects(Sandbox.updateNetwork(sbx.sandboxId, {}), SandboxNotFoundError)
  })

  test('kill', async () => {
    const sbx = await create()
    assert.equal(await sbx.kill(), true)
    assert.equal(await sbx.isRunning(), false)
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  })
})
