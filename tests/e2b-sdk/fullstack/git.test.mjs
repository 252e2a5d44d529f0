// The SDK's git helpers (sandbox.git.*, npm e2b@2.51.0 unmodified) against
// a `git daemon` inside the sandbox, through a real `capsule serve`
// (run.sh). The helpers run `git` through envd's process API as the
// sandbox's default user; the daemon serves a bare repository over
// git://127.0.0.1 with pushes enabled, so clone, add, commit, push, pull,
// status, branches and the config helpers all go through a real remote.
import assert from 'node:assert/strict'
import { after, describe, test } from 'node:test'
import { Sandbox } from 'e2b'

if (!process.env.CAPSULE_URL || process.env.E2B_DEBUG) {
  throw new Error('run this suite with tests/e2b-sdk/fullstack/run.sh')
}
const TEMPLATE = 'base' // has git (internal/image's base package list)

const created = []
after(async () => {
  for (const sbx of created) {
    await sbx.kill().catch(() => {})
  }
})

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

describe('sandbox.git against a git daemon in the sandbox', () => {
  test('init, clone, add, commit, push, pull, status, branches', async () => {
    const sbx = await Sandbox.create(TEMPLATE, { timeoutMs: 300_000 })
    created.push(sbx)
    const srv = '/home/user/srv'
    const url = 'git://127.0.0.1/project.git'
    const work = '/home/user/work'
    const other = '/home/user/other'

    // A bare repository served by git daemon, pushes enabled.
    await sbx.git.init(`${srv}/project.git`, { bare: true, initialBranch: 'main' })
    await sbx.commands.run(
      `git daemon --export-all --enable=receive-pack --reuseaddr --listen=127.0.0.1 --base-path=${srv} ${srv}`,
      { background: true, timeoutMs: 0 })
    for (let i = 0; ; i++) { // until the daemon listens
      const r = await sbx.commands.run(`git ls-remote ${url} >/dev/null 2>&1 && echo up || echo down`)
      if (r.stdout.trim() === 'up') break
      assert.ok(i < 100, 'git daemon did not start listening')
      await sleep(200)
    }

    await sbx.git.configureUser('Capsule Test', 'test@capsule.test')
    assert.equal(await sbx.git.getConfig('user.name'), 'Capsule Test')
    await sbx.git.setConfig('pull.rebase', 'false')
    assert.equal(await sbx.git.getConfig('pull.rebase'), 'false')

    // Clone the empty repository, commit, push with an upstream.
    await sbx.git.clone(url, { path: work })
    assert.equal(await sbx.git.remoteGet(work, 'origin'), url)
    await sbx.commands.run(`git -C ${work} symbolic-ref HEAD refs/heads/main`) // whatever the clone of an empty repository chose
    await sbx.files.write(`${work}/README.md`, 'hello from the sandbox\n')
    let st = await sbx.git.status(work)
    assert.equal(st.hasUntracked, true)
    assert.equal(st.untrackedCount, 1)
    await sbx.git.add(work)
    st = await sbx.git.status(work)
    assert.equal(st.hasStaged, true)
    assert.equal(st.stagedCount, 1)
    await sbx.git.commit(work, 'first commit')
    await sbx.git.push(work, { remote: 'origin', branch: 'main' })
    st = await sbx.git.status(work)
    assert.equal(st.isClean, true)
    assert.equal(st.currentBranch, 'main')
    assert.equal(st.upstream, 'origin/main')
    assert.equal(st.ahead, 0)
    // The daemon's repository has the commit.
    const log = await sbx.commands.run(`git -C ${srv}/project.git log --format=%s main`)
    assert.equal(log.stdout.trim(), 'first commit')

    // A second clone (branch and depth) pushes a change; the first pulls it.
    await sbx.git.clone(url, { path: other, branch: 'main', depth: 1 })
    assert.equal(await sbx.files.read(`${other}/README.md`), 'hello from the sandbox\n')
    await sbx.files.write(`${other}/CHANGES.md`, 'second\n')
    await sbx.git.add(other, { files: ['CHANGES.md'] })
    await sbx.git.commit(other, 'second commit', { authorName: 'Other Author', authorEmail: 'other@capsule.test' })
    await sbx.git.push(other)
    await sbx.commands.run(`git -C ${work} fetch origin`)
    st = await sbx.git.status(work)
    assert.equal(st.behind, 1)
    await sbx.git.pull(work)
    assert.equal(await sbx.files.read(`${work}/CHANGES.md`), 'second\n')
    const author = await sbx.commands.run(`git -C ${work} log -1 --format=%an`)
    assert.equal(author.stdout.trim(), 'Other Author')
    st = await sbx.git.status(work)
    assert.equal(st.behind, 0)
    assert.equal(st.isClean, true)

    // Branches: create, list, check out, push one, delete.
    await sbx.git.createBranch(work, 'feature')
    let br = await sbx.git.branches(work)
    assert.deepEqual([...br.branches].sort(), ['feature', 'main'])
    assert.equal(br.currentBranch, 'feature')
    await sbx.files.write(`${work}/feature.txt`, 'feature\n')
    await sbx.git.add(work)
    await sbx.git.commit(work, 'feature commit')
    await sbx.git.push(work, { remote: 'origin', branch: 'feature' })
    const remote = await sbx.commands.run(`git -C ${srv}/project.git branch --format='%(refname:short)'`)
    assert.deepEqual(remote.stdout.trim().split('\n').sort(), ['feature', 'main'])
    await sbx.git.checkoutBranch(work, 'main')
    assert.equal((await sbx.git.branches(work)).currentBranch, 'main')
    assert.equal(await sbx.files.exists(`${work}/feature.txt`), false)
    await sbx.git.deleteBranch(work, 'feature', { force: true })
    br = await sbx.git.branches(work)
    assert.deepEqual(br.branches, ['main'])

    // Reset and restore.
    await sbx.files.write(`${work}/README.md`, 'changed\n')
    st = await sbx.git.status(work)
    assert.equal(st.hasChanges, true)
    await sbx.git.restore(work, { paths: ['README.md'] })
    assert.equal(await sbx.files.read(`${work}/README.md`), 'hello from the sandbox\n')
    await sbx.git.reset(work, { mode: 'hard', target: 'HEAD~1' })
    assert.equal(await sbx.files.exists(`${work}/CHANGES.md`), false)
    st = await sbx.git.status(work)
    assert.equal(st.behind, 1)
  })
})
