// Shared helpers for the E2B JS SDK suite. run.sh starts envd on
// localhost:49983 and runs node with E2B_DEBUG=true, so the SDK talks to envd
// directly and never calls a control plane.
import assert from 'node:assert/strict'
import { after } from 'node:test'
import { randomBytes } from 'node:crypto'
import { Sandbox } from 'e2b'

export const DEBUG_SANDBOX_ID = 'debug_sandbox_id'
export const ENVD_URL = 'http://localhost:49983'
export const HOME = '/home/user'

/**
 * FULLSTACK: the suite runs against a real `capsule serve`
 * (fullstack/run.sh sets CAPSULE_URL and the E2B_* variables) instead of a
 * bare envd in debug mode; sandbox() is then one real `base` sandbox per
 * test file, killed when the file is done.
 */
export const FULLSTACK = Boolean(process.env.CAPSULE_URL) && !process.env.E2B_DEBUG
if (!FULLSTACK && !/^true$/i.test(process.env.E2B_DEBUG ?? '')) {
  throw new Error('this suite needs E2B_DEBUG=true and envd on localhost:49983 (tests/e2b-sdk/run.sh), or a capsule serve (tests/e2b-sdk/fullstack/run.sh)')
}

let shared
if (FULLSTACK) {
  after(async () => {
    if (shared) await (await shared).kill().catch(() => {})
  })
}

/** Connects to the debug sandbox (no API call in debug mode), or to this
 * file's real sandbox (FULLSTACK). */
export async function sandbox() {
  if (FULLSTACK) {
    shared ??= Sandbox.create('base', { timeoutMs: 1_800_000 })
    const sbx = await shared
    return Sandbox.connect(sbx.sandboxId)
  }
  const sbx = await Sandbox.connect(DEBUG_SANDBOX_ID)
  assert.equal(sbx.sandboxId, DEBUG_SANDBOX_ID)
  return sbx
}

/**
 * A raw request to the sandbox's envd, as the SDK would send it: straight
 * to the local envd in debug mode; in FULLSTACK through the server's proxy
 * (E2B_SANDBOX_URL) with E2B's routing headers and the sandbox's envd
 * access token.
 */
export function envdFetch(sbx, pathAndQuery, init = {}) {
  if (!FULLSTACK) return fetch(`${ENVD_URL}${pathAndQuery}`, init)
  const headers = new Headers(init.headers ?? {})
  headers.set('E2b-Sandbox-Id', sbx.sandboxId)
  headers.set('E2b-Sandbox-Port', '49983')
  if (sbx.envdAccessToken) headers.set('X-Access-Token', sbx.envdAccessToken)
  return fetch(`${process.env.E2B_SANDBOX_URL}${pathAndQuery}`, { ...init, headers })
}

/** A name no other test uses. */
export function uniq(prefix = 't') {
  return `${prefix}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Polls fn until it returns a truthy value; fails with `what` after timeoutMs.
 */
export async function waitFor(fn, { timeoutMs = 10_000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      last = await fn()
      if (last) return last
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) {
      const desc = typeof what === 'function' ? what() : what
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${desc} (last value: ${inspectShort(last)})`)
    }
    await sleep(intervalMs)
  }
}

function inspectShort(v) {
  const s = v instanceof Error ? `${v.name}: ${v.message}` : JSON.stringify(v)
  return s && s.length > 300 ? `${s.slice(0, 300)}…` : s
}

/** Rejects if p does not settle within ms. */
export async function within(ms, p, what = 'operation') {
  let t
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([p, timeout])
  } finally {
    clearTimeout(t)
  }
}

/** Settles p and returns the rejection reason (fails if it resolved). */
export async function rejection(p, what = 'promise') {
  try {
    const v = await p
    assert.fail(`${what} resolved (${inspectShort(v)}) but was expected to reject`)
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err
    return err
  }
}

/** True when no process with exactly this marker in its argv is alive. */
export async function processGone(sbx, marker) {
  const list = await sbx.commands.list()
  return !list.some((p) => [p.cmd, ...(p.args ?? [])].join(' ').includes(marker))
}

/** Collects everything a ReadableStream<Uint8Array> yields. */
export async function readAll(stream) {
  const chunks = []
  for await (const chunk of stream) chunks.push(Buffer.from(chunk))
  return Buffer.concat(chunks)
}

/** A small text accumulator for onData/onStdout callbacks. */
export function collector() {
  const parts = []
  const decoder = new TextDecoder()
  const c = {
    push(data) {
      parts.push(typeof data === 'string' ? data : decoder.decode(data, { stream: true }))
    },
    get text() {
      return parts.join('')
    },
    get count() {
      return parts.length
    },
    reset() {
      parts.length = 0
    },
    async waitFor(needle, timeoutMs = 10_000) {
      const match = typeof needle === 'string' ? (t) => t.includes(needle) : (t) => needle.test(t)
      await waitFor(() => match(c.text), { timeoutMs, what: () => `output matching ${needle} (got ${JSON.stringify(c.text.slice(-400))})` })
      return c.text
    },
  }
  c.push = c.push.bind(c)
  return c
}
