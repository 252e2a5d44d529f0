// sandbox.pty.* against process.Process Start/Connect/SendInput/Update with a PTY
// (spec §6.4, §9).
import assert from 'node:assert/strict'
import { before, describe, test } from 'node:test'
import { CommandExitError, NotFoundError } from 'e2b'
import { HOME, collector, rejection, sandbox, uniq, waitFor, within } from './helpers.mjs'

const T = { timeout: 30_000 }
const enc = new TextEncoder()

describe('pty', () => {
  let sbx
  before(async () => {
    sbx = await sandbox()
  })

  /** Creates a PTY whose output is collected; kills it after fn. */
  async function withPty(opts, fn) {
    const out = collector()
    const h = await sbx.pty.create({ cols: 80, rows: 24, timeoutMs: 25_000, onData: out.push, ...opts })
    const type = (s) => sbx.pty.sendInput(h.pid, enc.encode(s))
    try {
      return await fn({ h, out, type })
    } finally {
      await sbx.pty.kill(h.pid).catch(() => {})
    }
  }

  test('create returns a handle; typed input is echoed and executed', T, async () => {
    await withPty({}, async ({ h, out, type }) => {
      assert.ok(Number.isInteger(h.pid) && h.pid > 0)
      await type('echo "$((6*7))-pty-ok"\n')
      await out.waitFor('42-pty-ok')
      assert.ok(out.text.includes('$((6*7))-pty-ok'), 'the terminal should echo the typed command')
    })
  })

  test('runs an interactive login shell as the default user with TERM set', T, async () => {
    await withPty({}, async ({ out, type }) => {
      await type('echo "T=$TERM U=$(whoami) P=$(pwd) I=$-"; [ -t 0 ] && [ -t 1 ] && echo tty-yes\n')
      await out.waitFor(new RegExp(`T=xterm-256color U=user P=${HOME} I=\\S*i`))
      await out.waitFor('tty-yes\r\n')
    })
  })

  test('user, cwd and envs options', T, async () => {
    await withPty({ user: 'root', cwd: '/tmp', envs: { PTY_VAR: 'pty-value' } }, async ({ out, type }) => {
      await type('echo "U=$(whoami) P=$(pwd) V=$PTY_VAR L=$LANG"\n')
      await out.waitFor('U=root P=/tmp V=pty-value L=C.UTF-8')
    })
  })

  test('the PTY has the requested size and resize() changes it', T, async () => {
    await withPty({ cols: 80, rows: 24 }, async ({ h, out, type }) => {
      await type('echo "S1=$(stty size)"\n')
      await out.waitFor('S1=24 80')
      await sbx.pty.resize(h.pid, { cols: 100, rows: 30 })
      await type('echo "S2=$(stty size)"\n')
      await out.waitFor('S2=30 100')
      await sbx.pty.resize(h.pid, { cols: 132, rows: 43 })
      await type('echo "S3=$(tput cols)x$(tput lines)"\n')
      await out.waitFor('S3=132x43')
    })
  })

  test('Ctrl-C interrupts the foreground job', T, async () => {
    await withPty({}, async ({ out, type }) => {
      await type('sleep 30; echo "after-$((1+1))"\n')
      // interrupt the sleep itself, not bash still starting it (slow guests)
      await waitFor(async () => (await sbx.commands.run('pgrep -x sleep', { user: 'root' }).catch((e) => e)).exitCode === 0,
        { what: 'the sleep to run' })
      const t0 = Date.now()
      await type('\x03')
      // bash discards what was typed ahead of its new prompt after an
      // interrupt (readline flushes its input): wait for the prompt.
      await out.waitFor(/\^C[\s\S]*\$ $/, 15_000)
      await type('echo "alive-$((2+2))"\n')
      await out.waitFor('alive-4', 15_000)
      // well before the sleep's 30 s: it was interrupted (slow guests under
      // emulation take seconds for the round trips)
      assert.ok(Date.now() - t0 < 20_000)
      assert.ok(!out.text.includes('after-2'), 'the rest of the interrupted line must not run')
    })
  })

  test('large PTY output is delivered completely', T, async () => {
    await withPty({}, async ({ out, type }) => {
      await type('seq 1 30000 | tail -c 100000; echo "END-$((7*6))"\n')
      await out.waitFor('END-42', 15_000)
      const text = out.text.replace(/\r/g, '')
      for (const n of [25000, 29999, 30000]) assert.ok(text.includes(`\n${n}\n`), `missing line ${n}`)
    })
  })

  test('exit status of the shell is reported by wait()', T, async () => {
    const out = collector()
    const h = await sbx.pty.create({ cols: 80, rows: 24, timeoutMs: 25_000, onData: out.push })
    await sbx.pty.sendInput(h.pid, enc.encode('exit 7\n'))
    const err = await rejection(within(5_000, h.wait(), 'pty wait'))
    assert.ok(err instanceof CommandExitError, `got ${err?.name}: ${err?.message}`)
    assert.equal(err.exitCode, 7)
  })

  test('Ctrl-D on an empty line ends the shell with exit code 0', T, async () => {
    const out = collector()
    const h = await sbx.pty.create({ cols: 80, rows: 24, timeoutMs: 25_000, onData: out.push })
    // An EOF typed while the line discipline is still in canonical mode (before
    // readline took over the terminal) can be lost in the kernel: wait for the
    // shell to be ready first.
    await sbx.pty.sendInput(h.pid, enc.encode('echo "ready-$((5*5))"\n'))
    await out.waitFor('ready-25')
    await new Promise((r) => setTimeout(r, 200))
    await sbx.pty.sendInput(h.pid, enc.encode('\x04'))
    const r = await within(5_000, h.wait(), 'pty wait after EOF')
    assert.equal(r.exitCode, 0)
  })

  test('kill() terminates the PTY; it leaves the process list', T, async () => {
    const h = await sbx.pty.create({ cols: 80, rows: 24, timeoutMs: 25_000, onData: () => {} })
    const listed = (await sbx.commands.list()).find((p) => p.pid === h.pid)
    assert.ok(listed, 'PTY should be listed by commands.list()')
    assert.equal(listed.cmd, '/bin/bash')
    assert.deepEqual(listed.args, ['-i', '-l'])
    assert.equal(await sbx.pty.kill(h.pid), true)
    const err = await rejection(within(5_000, h.wait(), 'pty wait after kill'))
    assert.ok(err instanceof CommandExitError, `got ${err?.name}: ${err?.message}`)
    assert.equal(err.exitCode, -1)
    await waitFor(async () => !(await sbx.commands.list()).some((p) => p.pid === h.pid), {
      timeoutMs: 5_000,
      what: 'killed PTY to leave the list',
    })
    assert.equal(await sbx.pty.kill(h.pid), false)
  })

  test('the pid of a killed PTY is gone for the very next command (kill -0 fails)', T, async () => {
    const h = await sbx.pty.create({ cols: 80, rows: 24, timeoutMs: 25_000, onData: () => {} })
    assert.equal(await sbx.pty.kill(h.pid), true)
    const err = await rejection(sbx.commands.run(`kill -0 ${h.pid}`), `kill -0 ${h.pid}`)
    assert.ok(err instanceof CommandExitError, `got ${err?.name}: ${err?.message}`)
    assert.match(err.stderr, /No such process/)
  })

  test('connect() re-attaches to a PTY after disconnect', T, async () => {
    const first = collector()
    const h = await sbx.pty.create({ cols: 80, rows: 24, timeoutMs: 25_000, onData: first.push })
    try {
      const marker = uniq('m').replace(/-/g, '_')
      await sbx.pty.sendInput(h.pid, enc.encode(`${marker}=1; echo "one-$((${marker}+1))"\n`))
      await first.waitFor('one-2')
      await h.disconnect()
      const second = collector()
      const h2 = await sbx.pty.connect(h.pid, { onData: second.push, timeoutMs: 25_000 })
      assert.equal(h2.pid, h.pid)
      await sbx.pty.sendInput(h.pid, enc.encode(`echo "two-$((${marker}+2))"\n`))
      await second.waitFor('two-3')
      assert.ok(!first.text.includes('two-3'), 'a disconnected handle must not receive output')
      await sbx.pty.sendInput(h.pid, enc.encode('exit 0\n'))
      const r = await within(5_000, h2.wait(), 'connected pty wait')
      assert.equal(r.exitCode, 0)
    } finally {
      await sbx.pty.kill(h.pid).catch(() => {})
    }
  })

  test('sendInput / resize / connect on an unknown pid fail with NotFoundError', T, async () => {
    for (const [what, call] of [
      ['sendInput', () => sbx.pty.sendInput(4_000_003, enc.encode('x'))],
      ['resize', () => sbx.pty.resize(4_000_003, { cols: 10, rows: 10 })],
      ['connect', () => sbx.pty.connect(4_000_003, { onData: () => {} })],
    ]) {
      const err = await rejection(call(), what)
      assert.ok(err instanceof NotFoundError, `${what}: got ${err?.name}: ${err?.message}`)
    }
  })

  test('PTY output arrives as pty data, not stdout', T, async () => {
    const out = collector()
    const h = await sbx.pty.create({ cols: 80, rows: 24, timeoutMs: 25_000, onData: out.push })
    try {
      await sbx.pty.sendInput(h.pid, enc.encode('echo "x-$((3*3))"; exit 0\n'))
      await within(5_000, h.wait(), 'pty wait')
      assert.ok(out.text.includes('x-9'))
      assert.equal(h.stdout, '')
      assert.equal(h.stderr, '')
    } finally {
      await sbx.pty.kill(h.pid).catch(() => {})
    }
  })
})
