// sandbox.commands.* against envd's process.Process service (spec §6.1, §6.4, §9).
import assert from 'node:assert/strict'
import { before, describe, test } from 'node:test'
import {
  AuthenticationError,
  CommandExitError,
  InvalidArgumentError,
  NotFoundError,
  SandboxError,
  TimeoutError,
} from 'e2b'
import { FULLSTACK, HOME, collector, processGone, rejection, sandbox, uniq, waitFor, within } from './helpers.mjs'

const T = { timeout: 30_000 }

/** Asserts two (possibly huge) strings are equal without dumping them. */
function assertSameText(actual, expected, what) {
  if (actual === expected) return
  let i = 0
  while (i < actual.length && i < expected.length && actual[i] === expected[i]) i++
  assert.fail(
    `${what}: length ${actual.length}, expected ${expected.length}; first difference at ${i}: ` +
      `${JSON.stringify(actual.slice(Math.max(0, i - 20), i + 40))} vs ${JSON.stringify(expected.slice(Math.max(0, i - 20), i + 40))}`,
  )
}

describe('commands', () => {
  let sbx
  before(async () => {
    sbx = await sandbox()
  })

  describe('run', () => {
    test('captures stdout and stderr separately', T, async () => {
      const r = await sbx.commands.run('echo hello; echo oops >&2; printf "no-newline"')
      assert.equal(r.exitCode, 0)
      assert.equal(r.stdout, 'hello\nno-newline')
      assert.equal(r.stderr, 'oops\n')
      assert.equal(r.error, undefined)
    })

    test('runs through bash as a login shell', T, async () => {
      const r = await sbx.commands.run('echo "$BASH_VERSION"; shopt -q login_shell && echo login')
      const [version, login] = r.stdout.trim().split('\n')
      assert.match(version, /^\d+\.\d+/)
      assert.equal(login, 'login')
    })

    test('non-zero exit code throws CommandExitError with exitCode, output and error', T, async () => {
      const err = await rejection(sbx.commands.run('echo partial; echo bad >&2; exit 3'))
      assert.ok(err instanceof CommandExitError, `expected CommandExitError, got ${err?.name}: ${err?.message}`)
      assert.ok(err instanceof SandboxError)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stdout, 'partial\n')
      assert.equal(err.stderr, 'bad\n')
      assert.match(err.error ?? '', /exit status 3/)
    })

    test('exit codes are passed through (1, 42, 255)', T, async () => {
      for (const code of [1, 42, 255]) {
        const err = await rejection(sbx.commands.run(`exit ${code}`))
        assert.ok(err instanceof CommandExitError, `exit ${code}: got ${err?.name}: ${err?.message}`)
        assert.equal(err.exitCode, code)
      }
    })

    test('a process killed by a signal ends with exitCode -1', T, async () => {
      const err = await rejection(sbx.commands.run('kill -KILL $$'))
      assert.ok(err instanceof CommandExitError, `got ${err?.name}: ${err?.message}`)
      assert.equal(err.exitCode, -1)
      assert.match(err.error ?? '', /signal: killed/)
    })

    test('stdin is closed (not inherited) unless stdin: true', T, async () => {
      const r = await within(10_000, sbx.commands.run('cat; echo "cat-rc=$?"', { timeoutMs: 8_000 }), 'cat without stdin')
      assert.equal(r.stdout, 'cat-rc=0\n')
    })

    test('shell punctuation and newlines inside the command string reach bash verbatim', T, async () => {
      const punct = '[ok] !@#$%^&*()_+ ~{x}'
      assert.equal((await sbx.commands.run(`echo "${punct}"`)).stdout, `${punct}\n`)
      assert.equal((await sbx.commands.run('echo "first line\nsecond line"')).stdout, 'first line\nsecond line\n')
      assert.equal((await sbx.commands.run('for w in a b\ndo\n  echo "w=$w"\ndone')).stdout, 'w=a\nw=b\n')
    })

    test('multi-byte UTF-8 output is decoded intact', T, async () => {
      const text = 'héllo wörld ✓ 日本語 🚀'
      const r = await sbx.commands.run(`printf '%s' '${text}'`)
      assert.equal(r.stdout, text)
    })
  })

  describe('environment, cwd and user', () => {
    test('envs are passed to the command', T, async () => {
      const r = await sbx.commands.run('echo "$FOO|$BAR_BAZ|$EMPTY_ONE|${UNSET_VAR-unset}"', {
        envs: { FOO: 'bar', BAR_BAZ: 'with spaces and $dollar', EMPTY_ONE: '' },
      })
      assert.equal(r.stdout, 'bar|with spaces and $dollar||unset\n')
    })

    test('default environment has HOME, USER, LOGNAME and PATH of the user', T, async () => {
      const r = await sbx.commands.run('echo "$HOME|$USER|$LOGNAME"; command -v ls')
      const [ids, ls] = r.stdout.trim().split('\n')
      assert.equal(ids, `${HOME}|user|user`)
      assert.match(ls, /\/ls$/)
    })

    test('E2B_SANDBOX and /run/e2b/.E2B_SANDBOX say whether envd runs in a sandbox VM (false with -isnotfc, as in E2B’s debug setup)', T, async () => {
      const r = await sbx.commands.run('echo "${E2B_SANDBOX-missing}"; cat /run/e2b/.E2B_SANDBOX')
      const inVM = String(FULLSTACK)
      assert.equal(r.stdout, `${inVM}\n${inVM}`)
      if (FULLSTACK) {
        // and the sandbox knows its own identity
        const id = await sbx.commands.run('echo "$E2B_SANDBOX_ID"; cat /run/e2b/.E2B_SANDBOX_ID')
        assert.equal(id.stdout, `${sbx.sandboxId}\n${sbx.sandboxId}`)
      }
    })

    test('a command’s envs stay private to it; bash and python3 both see them', T, async () => {
      const name = `SCOPED_${uniq('v').replace(/-/g, '_')}`
      const opts = { envs: { [name]: 'only-here' } }
      assert.equal((await sbx.commands.run(`echo "$${name}"`, opts)).stdout, 'only-here\n')
      const py = `python3 -c 'import os, sys; print(os.environ.get(sys.argv[1], "absent"))' ${name}`
      assert.equal((await sbx.commands.run(py, opts)).stdout, 'only-here\n')
      assert.equal((await sbx.commands.run(`echo "\${${name}-absent}"`)).stdout, 'absent\n')
      assert.equal((await sbx.commands.run(py)).stdout, 'absent\n')
    })

    test('sudo works for the default user (setuid binaries run) and sees no earlier command’s envs', T, async (t) => {
      if (!(await sbx.commands.run('command -v sudo || true')).stdout.trim()) {
        t.skip('sudo is not installed on this host (E2B’s base template has it)')
        return
      }
      const name = `SUDO_${uniq('v').replace(/-/g, '_')}`
      await sbx.commands.run('true', { envs: { [name]: 'leaked' } })
      const r = await sbx.commands.run(`sudo -n sh -c 'echo "$(id -un):\${${name}-absent}"'; sudo echo "[$${name}]"`)
      assert.equal(r.stdout, 'root:absent\n[]\n')
    })

    test('default user is "user" with cwd /home/user', T, async () => {
      const r = await sbx.commands.run('whoami; pwd; id -u; id -g; id -gn')
      assert.deepEqual(r.stdout.trim().split('\n'), ['user', HOME, '1000', '1000', 'user'])
    })

    test('user: "root" runs as root in /root', T, async () => {
      const r = await sbx.commands.run('whoami; pwd; id -u; echo "$HOME"', { user: 'root' })
      assert.deepEqual(r.stdout.trim().split('\n'), ['root', '/root', '0', '/root'])
    })

    test('user: "user" explicitly', T, async () => {
      const r = await sbx.commands.run('whoami', { user: 'user' })
      assert.equal(r.stdout, 'user\n')
    })

    test('unknown user is rejected with AuthenticationError', T, async () => {
      const err = await rejection(sbx.commands.run('whoami', { user: 'no-such-user-xyz' }))
      assert.ok(err instanceof AuthenticationError, `got ${err?.name}: ${err?.message}`)
      assert.match(err.message, /no-such-user-xyz/)
    })

    test('cwd sets the working directory (absolute)', T, async () => {
      const r = await sbx.commands.run('pwd', { cwd: '/tmp' })
      assert.equal(r.stdout, '/tmp\n')
    })

    test('relative cwd is resolved against the user home', T, async () => {
      const dir = uniq('cwd')
      await sbx.commands.run(`mkdir -p ${dir}/inner`)
      const r = await sbx.commands.run('pwd', { cwd: `${dir}/inner` })
      assert.equal(r.stdout, `${HOME}/${dir}/inner\n`)
      const r2 = await sbx.commands.run('pwd', { cwd: '~' })
      assert.equal(r2.stdout, `${HOME}\n`)
    })

    test('a missing cwd fails with InvalidArgumentError', T, async () => {
      const err = await rejection(sbx.commands.run('pwd', { cwd: '/definitely/not/here' }))
      assert.ok(err instanceof InvalidArgumentError, `got ${err?.name}: ${err?.message}`)
    })

    test('files created by a command are owned by the running user', T, async () => {
      const f = `/tmp/${uniq('own')}`
      await sbx.commands.run(`touch ${f}-u`)
      await sbx.commands.run(`touch ${f}-r`, { user: 'root' })
      const r = await sbx.commands.run(`stat -c '%U:%G %a' ${f}-u ${f}-r`)
      assert.deepEqual(r.stdout.trim().split('\n'), ['user:user 644', 'root:root 644'])
    })
  })

  describe('callbacks and output volume', () => {
    test('onStdout / onStderr receive the output as it is produced', T, async () => {
      const out = collector()
      const err = collector()
      const r = await sbx.commands.run('for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done', {
        onStdout: out.push,
        onStderr: err.push,
      })
      assert.equal(out.text, 'out1\nout2\nout3\n')
      assert.equal(err.text, 'err1\nerr2\nerr3\n')
      assert.equal(r.stdout, out.text)
      assert.equal(r.stderr, err.text)
      assert.ok(out.count >= 2, `expected streamed chunks, got ${out.count}`)
    })

    test('onStdout fires before the command finishes (streaming, not buffered)', T, async () => {
      const out = collector()
      const h = await sbx.commands.run('echo first; sleep 2; echo second', {
        background: true,
        onStdout: out.push,
        timeoutMs: 20_000,
      })
      await out.waitFor('first', 1_500)
      assert.equal(h.exitCode, undefined, 'process should still be running')
      assert.ok(!out.text.includes('second'))
      const r = await h.wait()
      assert.equal(r.stdout, 'first\nsecond\n')
    })

    test('large output (~5 MB stdout + 0.6 MB stderr) arrives complete and in order', { timeout: 60_000 }, async () => {
      const n = 700_000
      const m = 100_000
      let chunks = 0
      const r = await sbx.commands.run(`seq 1 ${n}; seq 1 ${m} >&2`, {
        onStdout: () => {
          chunks++
        },
        timeoutMs: 50_000,
      })
      const seq = (k) => {
        const a = new Array(k)
        for (let i = 0; i < k; i++) a[i] = String(i + 1)
        return `${a.join('\n')}\n`
      }
      const expected = seq(n)
      assert.ok(expected.length > 4_500_000)
      assertSameText(r.stdout, expected, 'stdout')
      assertSameText(r.stderr, seq(m), 'stderr')
      assert.ok(chunks > 1, 'large output should arrive in several chunks')
    })

    test('binary-ish output of exactly 5 MiB keeps every byte', { timeout: 60_000 }, async () => {
      const size = 5 * 1024 * 1024
      const r = await sbx.commands.run(`head -c ${size} /dev/zero | tr '\\0' 'x'; echo; echo tail-marker`, { timeoutMs: 50_000 })
      assert.equal(r.stdout.length, size + 1 + 'tail-marker\n'.length)
      assert.ok(r.stdout.endsWith('x\ntail-marker\n'))
      assert.equal(r.stdout.indexOf('\n'), size)
    })

    test('many concurrent commands each get their own output', { timeout: 60_000 }, async () => {
      const n = 40
      const results = await Promise.all(
        Array.from({ length: n }, (_, i) =>
          sbx.commands.run(`sleep 0.$((RANDOM % 3)); echo "job-${i}"; echo "err-${i}" >&2; exit $(( ${i} % 2 ))`).then(
            (r) => r,
            (e) => e,
          ),
        ),
      )
      results.forEach((r, i) => {
        if (i % 2 === 0) {
          assert.equal(r.exitCode, 0, `job ${i}: ${r?.message ?? ''}`)
        } else {
          assert.ok(r instanceof CommandExitError, `job ${i}: expected CommandExitError, got ${r?.name}: ${r?.message}`)
          assert.equal(r.exitCode, 1)
        }
        assert.equal(r.stdout, `job-${i}\n`)
        assert.equal(r.stderr, `err-${i}\n`)
      })
    })
  })

  describe('background, list, kill, connect', () => {
    test('background run returns a handle with a pid at once; wait() gives the result', T, async () => {
      const t0 = Date.now()
      const h = await sbx.commands.run('sleep 1; echo done', { background: true, timeoutMs: 20_000 })
      assert.ok(Date.now() - t0 < 900, 'background run should not wait for the command')
      assert.ok(Number.isInteger(h.pid) && h.pid > 0, `pid ${h.pid}`)
      assert.equal(h.exitCode, undefined)
      const r = await h.wait()
      assert.equal(r.exitCode, 0)
      assert.equal(r.stdout, 'done\n')
      assert.equal(h.exitCode, 0)
    })

    test('list shows running commands with cmd, args, envs and cwd', T, async () => {
      const marker = uniq('list')
      const cmd = `sleep 30 # ${marker}`
      const h = await sbx.commands.run(cmd, { background: true, envs: { MARK: marker }, cwd: '/tmp', timeoutMs: 20_000 })
      try {
        const list = await sbx.commands.list()
        const p = list.find((x) => x.pid === h.pid)
        assert.ok(p, `pid ${h.pid} not in list ${JSON.stringify(list.map((x) => x.pid))}`)
        assert.equal(p.cmd, '/bin/bash')
        assert.deepEqual(p.args, ['-l', '-c', cmd])
        assert.equal(p.envs.MARK, marker)
        assert.equal(p.cwd, '/tmp')
      } finally {
        await h.kill()
      }
    })

    test('kill() terminates a background command; wait() reports exitCode -1; it leaves the list', T, async () => {
      const marker = uniq('kill')
      const h = await sbx.commands.run(`sleep 30 # ${marker}`, { background: true, timeoutMs: 20_000 })
      assert.equal(await h.kill(), true)
      const err = await rejection(within(5_000, h.wait(), 'wait after kill'))
      assert.ok(err instanceof CommandExitError, `got ${err?.name}: ${err?.message}`)
      assert.equal(err.exitCode, -1)
      await waitFor(() => processGone(sbx, marker), { timeoutMs: 5_000, what: 'killed process to leave the list' })
      assert.equal(await sbx.commands.kill(h.pid), false, 'killing a dead pid returns false')
    })

    test('the pid of a killed command is gone for the very next command (kill -0 fails)', T, async () => {
      for (let i = 0; i < 3; i++) {
        const h = await sbx.commands.run('sleep 30', { background: true, timeoutMs: 20_000 })
        assert.equal(await sbx.commands.kill(h.pid), true)
        const err = await rejection(sbx.commands.run(`kill -0 ${h.pid}`), `kill -0 ${h.pid}`)
        assert.ok(err instanceof CommandExitError, `got ${err?.name}: ${err?.message}`)
        assert.match(err.stderr, /No such process/)
      }
    })

    test('commands.kill(pid) of an unknown pid returns false', T, async () => {
      assert.equal(await sbx.commands.kill(4_000_000), false)
    })

    test('connect() attaches to a running command and receives its later output', T, async () => {
      const h = await sbx.commands.run('read line; echo "got:$line"; echo bye >&2', {
        background: true,
        stdin: true,
        timeoutMs: 20_000,
      })
      await h.disconnect()
      const out = collector()
      const err = collector()
      const h2 = await sbx.commands.connect(h.pid, { onStdout: out.push, onStderr: err.push, timeoutMs: 20_000 })
      assert.equal(h2.pid, h.pid)
      await sbx.commands.sendStdin(h.pid, 'over-connect\n')
      const r = await within(10_000, h2.wait(), 'connected wait')
      assert.equal(r.exitCode, 0)
      assert.equal(r.stdout, 'got:over-connect\n')
      assert.equal(out.text, 'got:over-connect\n')
      assert.equal(err.text, 'bye\n')
    })

    test('two handles on one process both see its output', T, async () => {
      const h = await sbx.commands.run('read x; echo "seen:$x"', { background: true, stdin: true, timeoutMs: 20_000 })
      const h2 = await sbx.commands.connect(h.pid, { timeoutMs: 20_000 })
      await h.sendStdin('both\n')
      const [r1, r2] = await within(10_000, Promise.all([h.wait(), h2.wait()]), 'both waits')
      assert.equal(r1.stdout, 'seen:both\n')
      assert.equal(r2.stdout, 'seen:both\n')
    })

    test('connect() to an unknown pid fails with NotFoundError', T, async () => {
      const err = await rejection(sbx.commands.connect(4_000_001))
      assert.ok(err instanceof NotFoundError, `got ${err?.name}: ${err?.message}`)
    })

    test('connect() right after a process exited returns its result', T, async () => {
      const h = await sbx.commands.run('exit 5', { background: true, timeoutMs: 20_000 })
      await rejection(h.wait())
      const h2 = await sbx.commands.connect(h.pid)
      const err = await rejection(within(5_000, h2.wait(), 'wait on exited process'))
      assert.ok(err instanceof CommandExitError, `got ${err?.name}: ${err?.message}`)
      assert.equal(err.exitCode, 5)
    })
  })

  describe('stdin', () => {
    test('sendStdin delivers data to a command started with stdin: true', T, async () => {
      const out = collector()
      const h = await sbx.commands.run('cat', { background: true, stdin: true, onStdout: out.push, timeoutMs: 20_000 })
      try {
        await sbx.commands.sendStdin(h.pid, 'hello\n')
        await out.waitFor('hello\n', 5_000)
        await h.sendStdin(new TextEncoder().encode('bytes too\n'))
        await out.waitFor('bytes too\n', 5_000)
        assert.equal(out.text, 'hello\nbytes too\n')
      } finally {
        await h.kill()
      }
    })

    test('empty stdin writes are accepted and deliver nothing; punctuation and newlines pass verbatim', T, async () => {
      const h = await sbx.commands.run('cat; echo "[eof]"', { background: true, stdin: true, timeoutMs: 20_000 })
      await sbx.commands.sendStdin(h.pid, '')
      await h.sendStdin(new Uint8Array(0))
      await sbx.commands.sendStdin(h.pid, 'one !@#$%^&*()_+\ntwo')
      await sbx.commands.sendStdin(h.pid, '')
      await h.closeStdin()
      const r = await within(5_000, h.wait(), 'cat after closeStdin')
      assert.equal(r.stdout, 'one !@#$%^&*()_+\ntwo[eof]\n')
    })

    test('closeStdin sends EOF so the command can finish', T, async () => {
      const h = await sbx.commands.run('wc -c', { background: true, stdin: true, timeoutMs: 20_000 })
      await h.sendStdin('abcde')
      await sbx.commands.sendStdin(h.pid, '12345')
      await h.closeStdin()
      const r = await within(5_000, h.wait(), 'wc after closeStdin')
      assert.equal(r.stdout.trim(), '10')
    })

    test('closeStdin twice is harmless', T, async () => {
      const h = await sbx.commands.run('cat >/dev/null; echo eof; sleep 1', { background: true, stdin: true, timeoutMs: 20_000 })
      await sbx.commands.closeStdin(h.pid)
      await h.closeStdin()
      const r = await within(5_000, h.wait(), 'cat after closeStdin')
      assert.equal(r.stdout, 'eof\n')
    })

    test('large stdin (1 MiB) is passed through intact', T, async () => {
      const h = await sbx.commands.run('sha256sum | cut -d" " -f1', { background: true, stdin: true, timeoutMs: 20_000 })
      const { createHash, randomBytes } = await import('node:crypto')
      const data = randomBytes(1024 * 1024)
      for (let off = 0; off < data.length; off += 64 * 1024) {
        await h.sendStdin(data.subarray(off, off + 64 * 1024))
      }
      await h.closeStdin()
      const r = await within(10_000, h.wait(), 'sha256sum')
      assert.equal(r.stdout.trim(), createHash('sha256').update(data).digest('hex'))
    })

    test('sendStdin to a command without stdin fails', T, async () => {
      const h = await sbx.commands.run('sleep 20', { background: true, timeoutMs: 20_000 })
      try {
        const err = await rejection(sbx.commands.sendStdin(h.pid, 'x'))
        assert.ok(err instanceof SandboxError || err instanceof Error, `got ${err}`)
      } finally {
        await h.kill()
      }
    })

    test('sendStdin to an unknown pid fails with NotFoundError', T, async () => {
      const err = await rejection(sbx.commands.sendStdin(4_000_002, 'x'))
      assert.ok(err instanceof NotFoundError, `got ${err?.name}: ${err?.message}`)
    })
  })

  describe('timeouts', () => {
    test('timeoutMs kills a foreground command and throws TimeoutError', T, async () => {
      const marker = '31.37'
      const t0 = Date.now()
      const err = await rejection(within(10_000, sbx.commands.run(`sleep ${marker}`, { timeoutMs: 1_000 }), 'timed-out run'))
      const elapsed = Date.now() - t0
      assert.ok(err instanceof TimeoutError, `got ${err?.name}: ${err?.message}`)
      assert.ok(elapsed >= 900 && elapsed < 6_000, `took ${elapsed} ms`)
      await waitFor(() => processGone(sbx, `sleep ${marker}`), { timeoutMs: 5_000, what: 'timed-out process to leave the list' })
      const ps = await sbx.commands.run(`ps -eo args | grep -c '[s]leep 31[.]37' || true`)
      assert.equal(ps.stdout.trim(), '0', 'the timed-out sleep must be killed, not just detached')
    })

    test('timeoutMs also bounds a background command after the client disconnects', T, async () => {
      const marker = uniq('bgto')
      const h = await sbx.commands.run(`sleep 30 # ${marker}`, { background: true, timeoutMs: 1_000 })
      await h.disconnect()
      await waitFor(() => processGone(sbx, marker), { timeoutMs: 6_000, what: 'background process killed at its deadline' })
    })

    test('disconnect() without a deadline leaves the command running', T, async () => {
      const marker = uniq('keep')
      const h = await sbx.commands.run(`sleep 30 # ${marker}`, { background: true, timeoutMs: 0 })
      await h.disconnect()
      await new Promise((r) => setTimeout(r, 500))
      assert.equal(await processGone(sbx, marker), false, 'process must survive the client disconnect')
      assert.equal(await sbx.commands.kill(h.pid), true)
      await waitFor(() => processGone(sbx, marker), { timeoutMs: 5_000, what: 'killed process to leave the list' })
    })
  })
})
