// The unmodified E2B JS SDK's Template class (npm e2b@2.51.0) builds a
// template on a real `capsule serve` (issue 13 part 5): runCmd, copy,
// setEnvs, setWorkdir, setUser and start/ready commands, then
// Sandbox.create from it sees all of them, the start command's process
// running. run.sh points E2B_API_URL, E2B_SANDBOX_URL and E2B_DOMAIN at
// the server.
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import { Sandbox, Template, waitForFile } from 'e2b'

if (!process.env.CAPSULE_URL || process.env.E2B_DEBUG) {
  throw new Error('run this suite with tests/e2b-sdk/fullstack/run.sh')
}

const ctx = mkdtempSync(path.join(tmpdir(), 'capsule-template-'))
const created = []
after(async () => {
  for (const sbx of created) await sbx.kill().catch(() => {})
  rmSync(ctx, { recursive: true, force: true })
})

test('Template.build, then Sandbox.create from the template', { timeout: 1_200_000 }, async () => {
  mkdirSync(path.join(ctx, 'site'))
  writeFileSync(path.join(ctx, 'site', 'index.html'), '<h1>from the template</h1>\n')
  const name = `sdk-template-${Date.now().toString(36)}`
  const template = Template({ fileContextPath: ctx })
    .fromBaseImage()
    .copy('site', '/srv/site/')
    .setEnvs({ GREETING: 'hello from the template' })
    .runCmd('mkdir -p /home/user/work && echo "$GREETING" > /home/user/work/greeting.txt')
    .setWorkdir('/home/user/work')
    .setUser('user')
    .setStartCmd('echo $$ > /tmp/start.pid; touch /tmp/ready; exec sleep 100000', waitForFile('/tmp/ready'))
  const logs = []
  const info = await Template.build(template, name, { cpuCount: 1, memoryMB: 512, onBuildLogs: (e) => logs.push(e.message) })
  assert.equal(info.name ?? info.alias, name)
  assert.ok(await Template.exists(name), 'Template.exists of the built template')
  assert.equal(await Template.exists(`${name}-nope`), false)

  const sbx = await Sandbox.create(name, { timeoutMs: 300_000 })
  created.push(sbx)
  const run = async (cmd) => (await sbx.commands.run(cmd)).stdout.trim()
  assert.equal(await run('cat /srv/site/index.html'), '<h1>from the template</h1>')
  assert.equal(await run('cat greeting.txt'), 'hello from the template')
  assert.equal(await run('pwd'), '/home/user/work')
  assert.equal(await run('whoami'), 'user')
  assert.equal(await run('echo $GREETING'), 'hello from the template')
  assert.equal(await run('kill -0 $(cat /tmp/start.pid) && echo alive'), 'alive')
})

test('a build whose command fails throws with its step', { timeout: 600_000 }, async () => {
  const template = Template().fromTemplate('base').runCmd('echo about to fail; exit 3')
  await assert.rejects(Template.build(template, `sdk-fail-${Date.now().toString(36)}`, { cpuCount: 1, memoryMB: 512 }),
    (err) => /RUN exited with status 3/.test(err.message))
})

test('an image no registry serves fails at its base step', { timeout: 120_000 }, async () => {
  const template = Template().fromImage('ubuntu:22.04').runCmd('true')
  await assert.rejects(Template.build(template, `sdk-ubuntu-${Date.now().toString(36)}`),
    (err) => /no container registry/.test(err.message))
})

test('tags: a build of name:tag, Sandbox.create by tag, assignTags, removeTags, getTags, exists', { timeout: 1_200_000 }, async () => {
  const name = `sdk-tags-${Date.now().toString(36)}`
  const template = Template().fromTemplate('base').runCmd('echo tagged-v1 > /tmp/version.txt')
  const info = await Template.build(template, `${name}:v1`, { cpuCount: 1, memoryMB: 512 })
  assert.deepEqual(info.tags, ['v1'])
  // Only a tagged version: the name exists, but "name" alone (the
  // default tag) names nothing.
  assert.ok(await Template.exists(name), 'Template.exists of a name with a tagged version')
  await assert.rejects(Sandbox.create(name, { timeoutMs: 60_000 }))

  const read = async (ref) => {
    const sbx = await Sandbox.create(ref, { timeoutMs: 300_000 })
    created.push(sbx)
    try {
      return (await sbx.commands.run('cat /tmp/version.txt')).stdout.trim()
    } finally {
      await sbx.kill()
    }
  }
  assert.equal(await read(`${name}:v1`), 'tagged-v1')

  const assigned = await Template.assignTags(`${name}:v1`, ['prod', 'default'])
  assert.deepEqual(assigned.tags, ['prod', 'default'])
  assert.ok(assigned.buildId, 'the tagged version names its build')
  assert.equal(await read(`${name}:prod`), 'tagged-v1')
  assert.equal(await read(name), 'tagged-v1')
  const tags = (await Template.getTags(name)).map((t) => t.tag).sort()
  assert.deepEqual(tags, ['default', 'prod', 'v1'])

  await Template.removeTags(name, 'v1')
  assert.deepEqual((await Template.getTags(name)).map((t) => t.tag).sort(), ['default', 'prod'])
  await assert.rejects(Sandbox.create(`${name}:v1`, { timeoutMs: 60_000 }))
  await assert.rejects(Template.removeTags(name, 'default'))
  await assert.rejects(Template.assignTags(`${name}:nope`, 'x'))
})
