// sandbox.files.* against envd's filesystem.Filesystem service and the /files
// REST endpoints (spec §6.2, §6.5, §7.2–§7.4, §9).
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { gzipSync } from 'node:zlib'
import { after, before, describe, test } from 'node:test'
import { AuthenticationError, FileNotFoundError, FileType, InvalidArgumentError, NotFoundError } from 'e2b'
import { ENVD_URL, FULLSTACK, HOME, envdFetch, readAll, rejection, sandbox, uniq } from './helpers.mjs'

const T = { timeout: 30_000 }

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex')
const toArrayBuffer = (buf) => buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)

describe('files', () => {
  let sbx
  let dir // per-run scratch directory under /home/user
  before(async () => {
    sbx = await sandbox()
    dir = `${HOME}/${uniq('files')}`
    assert.equal(await sbx.files.makeDir(dir), true)
  })
  after(async () => {
    await sbx?.files.remove(dir).catch(() => {})
  })

  describe('write and read', () => {
    test('write text returns WriteInfo and read returns the text', T, async () => {
      const p = `${dir}/hello.txt`
      const info = await sbx.files.write(p, 'Hello, world!\n')
      assert.equal(info.path, p)
      assert.equal(info.name, 'hello.txt')
      assert.equal(info.type, FileType.FILE)
      assert.equal(await sbx.files.read(p), 'Hello, world!\n')
    })

    test('relative paths resolve against /home/user', T, async () => {
      const name = `${uniq('rel')}.txt`
      const info = await sbx.files.write(name, 'relative')
      assert.equal(info.path, `${HOME}/${name}`)
      assert.equal(await sbx.files.read(`${HOME}/${name}`), 'relative')
      assert.equal(await sbx.files.read(`~/${name}`), 'relative')
      const r = await sbx.commands.run(`cat ${name}`)
      assert.equal(r.stdout, 'relative')
      await sbx.files.remove(name)
    })

    test('overwriting replaces the whole content', T, async () => {
      const p = `${dir}/over.txt`
      await sbx.files.write(p, 'a much longer first version')
      await sbx.files.write(p, 'short')
      assert.equal(await sbx.files.read(p), 'short')
    })

    test('empty file', T, async () => {
      const p = `${dir}/empty.txt`
      await sbx.files.write(p, '')
      assert.equal(await sbx.files.read(p), '')
      assert.equal((await sbx.files.getInfo(p)).size, 0)
    })

    test('UTF-8 text round trip', T, async () => {
      const p = `${dir}/utf8.txt`
      const text = 'Ünïcödé ✓ — 日本語 — 🚀\n'
      await sbx.files.write(p, text)
      assert.equal(await sbx.files.read(p), text)
      const r = await sbx.commands.run(`wc -c < ${p}`)
      assert.equal(Number(r.stdout.trim()), Buffer.byteLength(text))
    })

    test('10 MiB binary round trip is byte-exact', { timeout: 60_000 }, async () => {
      const p = `${dir}/random.bin`
      const data = randomBytes(10 * 1024 * 1024)
      const info = await sbx.files.write(p, toArrayBuffer(data))
      assert.equal(info.path, p)
      const back = await sbx.files.read(p, { format: 'bytes' })
      assert.ok(back instanceof Uint8Array)
      assert.equal(back.length, data.length)
      assert.ok(Buffer.from(back).equals(data), 'downloaded bytes differ from uploaded bytes')
      const r = await sbx.commands.run(`sha256sum ${p} | cut -d' ' -f1`)
      assert.equal(r.stdout.trim(), sha256(data), 'sha256 inside the sandbox differs')
      assert.equal((await sbx.files.getInfo(p)).size, data.length)
    })

    test('all 256 byte values survive (Blob upload)', T, async () => {
      const p = `${dir}/bytes.bin`
      const data = Buffer.from(Array.from({ length: 512 }, (_, i) => i % 256))
      await sbx.files.write(p, new Blob([data]))
      const back = Buffer.from(await sbx.files.read(p, { format: 'bytes' }))
      assert.ok(back.equals(data))
    })

    test('write creates missing parent directories owned by the user', T, async () => {
      const p = `${dir}/new/nested/deep/file.txt`
      await sbx.files.write(p, 'deep')
      assert.equal(await sbx.files.read(p), 'deep')
      const parent = await sbx.files.getInfo(`${dir}/new/nested`)
      assert.equal(parent.type, FileType.DIR)
      assert.equal(parent.owner, 'user')
      assert.equal(parent.group, 'user')
      assert.equal(parent.mode & 0o777, 0o755)
    })

    test('write multiple files in one call', T, async () => {
      const rel = `${dir.slice(HOME.length + 1)}/multi/b.txt`
      const infos = await sbx.files.write([
        { path: `${dir}/multi/a.txt`, data: 'A' },
        { path: rel, data: 'BB' },
        { path: `${dir}/multi/c.bin`, data: toArrayBuffer(Buffer.from([0, 1, 2, 255])) },
      ])
      assert.equal(infos.length, 3)
      assert.deepEqual(
        infos.map((i) => i.path).sort(),
        [`${dir}/multi/a.txt`, `${dir}/multi/b.txt`, `${dir}/multi/c.bin`],
      )
      assert.ok(infos.every((i) => i.type === FileType.FILE))
      assert.equal(await sbx.files.read(`${dir}/multi/a.txt`), 'A')
      assert.equal(await sbx.files.read(`${dir}/multi/b.txt`), 'BB')
      assert.deepEqual([...(await sbx.files.read(`${dir}/multi/c.bin`, { format: 'bytes' }))], [0, 1, 2, 255])
    })

    test('a multi-file write may target directories the user could not create; all go to the user', T, async () => {
      // E2B's envd writes as root and hands the result to the user (its SDK
      // test writes /<n>/file as `user`); a root-owned directory stands in.
      const locked = `/tmp/${uniq('rootdir')}`
      await sbx.commands.run(`mkdir -m 0755 ${locked}`, { user: 'root' })
      const entries = [
        { path: `${locked}/sub/one.txt`, data: 'one' },
        { path: `${HOME}/${uniq('multi')}.txt`, data: 'two' },
        { path: `${locked}/three.txt`, data: 'three' },
      ]
      const infos = await sbx.files.write(entries)
      assert.equal(infos.length, entries.length)
      for (const [i, e] of entries.entries()) {
        assert.equal(infos[i].path, e.path)
        assert.equal(infos[i].name, e.path.split('/').pop())
        assert.equal(infos[i].type, FileType.FILE)
        assert.equal(await sbx.files.exists(e.path), true)
        assert.equal(await sbx.files.read(e.path), e.data)
        assert.equal((await sbx.files.getInfo(e.path)).owner, 'user')
      }
      assert.equal((await sbx.files.getInfo(`${locked}/sub`)).owner, 'user')
      await sbx.files.remove(entries[1].path)
    })

    test('writeFiles with many files', T, async () => {
      const files = Array.from({ length: 25 }, (_, i) => ({ path: `${dir}/many/f${i}.txt`, data: `content ${i}` }))
      const infos = await sbx.files.writeFiles(files)
      assert.equal(infos.length, files.length)
      const r = await sbx.commands.run(`cat ${dir}/many/f7.txt; echo; ls ${dir}/many | wc -l`)
      assert.equal(r.stdout, 'content 7\n25\n')
    })

    test('read as bytes, blob and stream', T, async () => {
      const p = `${dir}/formats.txt`
      const text = 'format test ✓\n'.repeat(1000)
      await sbx.files.write(p, text)
      const bytes = await sbx.files.read(p, { format: 'bytes' })
      assert.ok(bytes instanceof Uint8Array)
      assert.equal(Buffer.from(bytes).toString('utf8'), text)
      const blob = await sbx.files.read(p, { format: 'blob' })
      assert.ok(blob instanceof Blob)
      assert.equal(blob.size, Buffer.byteLength(text))
      assert.equal(await blob.text(), text)
      const stream = await sbx.files.read(p, { format: 'stream' })
      assert.equal((await readAll(stream)).toString('utf8'), text)
    })

    test('write from a ReadableStream (streamed octet-stream upload)', T, async () => {
      const p = `${dir}/streamed.bin`
      const parts = Array.from({ length: 20 }, () => randomBytes(64 * 1024))
      const stream = new ReadableStream({
        start(controller) {
          for (const part of parts) controller.enqueue(new Uint8Array(part))
          controller.close()
        },
      })
      const info = await sbx.files.write(p, stream)
      assert.equal(info.path, p)
      const back = Buffer.from(await sbx.files.read(p, { format: 'bytes' }))
      assert.ok(back.equals(Buffer.concat(parts)))
    })

    test('useOctetStream upload', T, async () => {
      const p = `${dir}/octet.txt`
      const info = await sbx.files.write(p, 'octet body', { useOctetStream: true })
      assert.equal(info.path, p)
      assert.equal(await sbx.files.read(p), 'octet body')
    })

    test('gzip upload and gzip download', T, async () => {
      const p = `${dir}/gz.txt`
      const text = 'compress me please '.repeat(50_000)
      const info = await sbx.files.write(p, text, { gzip: true })
      assert.equal(info.path, p)
      const r = await sbx.commands.run(`wc -c < ${p}`)
      assert.equal(Number(r.stdout.trim()), text.length, 'file on disk must be stored decompressed')
      assert.equal(await sbx.files.read(p, { gzip: true }), text)
      assert.equal(await sbx.files.read(p), text)
    })

    test('writeFiles with gzip: one compressed upload per file, each readable with and without gzip', T, async () => {
      const entries = [1, 2, 3].map((i) => ({ path: `${dir}/gzm/${i}.txt`, data: `gzip entry ${i} `.repeat(i * 100) }))
      const infos = await sbx.files.writeFiles(entries, { gzip: true })
      assert.deepEqual(infos.map((i) => i.path), entries.map((e) => e.path))
      for (const e of entries) {
        assert.equal(await sbx.files.read(e.path), e.data)
        assert.equal(new TextDecoder().decode(await sbx.files.read(e.path, { format: 'bytes', gzip: true })), e.data)
      }
    })

    test('gzip download answers with Content-Encoding: gzip', T, async () => {
      const p = `${dir}/gz2.txt`
      await sbx.files.write(p, 'x'.repeat(10_000))
      const res = await envdFetch(sbx, `/files?path=${encodeURIComponent(p)}`, { headers: { 'Accept-Encoding': 'gzip' } })
      assert.equal(res.status, 200)
      assert.equal(res.headers.get('content-encoding'), 'gzip')
      assert.equal(await res.text(), 'x'.repeat(10_000)) // fetch decodes transparently
    })

    test('raw gzip octet-stream POST is decompressed by envd', T, async () => {
      const p = `${dir}/raw-gz.txt`
      const res = await envdFetch(sbx, `/files?path=${encodeURIComponent(p)}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'gzip' },
        body: gzipSync(Buffer.from('raw gzip body')),
      })
      assert.equal(res.status, 200, await res.clone().text())
      const body = await res.json()
      assert.deepEqual(body, [{ path: p, name: 'raw-gz.txt', type: 'file' }])
      assert.equal(await sbx.files.read(p), 'raw gzip body')
    })

    test('an upload gives the file to the uploading user, also when it existed', T, async () => {
      const p = `/tmp/${uniq('chown')}.txt`
      await sbx.files.write(p, 'by user')
      assert.equal((await sbx.files.getInfo(p)).owner, 'user')
      await sbx.files.write(p, 'by root', { user: 'root' })
      const st = await sbx.files.getInfo(p)
      assert.equal(st.owner, 'root')
      assert.equal(st.group, 'root')
      assert.equal(await sbx.files.read(p), 'by root')
    })

    test('write and read as root', T, async () => {
      const name = `${uniq('root')}.txt`
      const info = await sbx.files.write(name, 'for root', { user: 'root' })
      assert.equal(info.path, `/root/${name}`)
      assert.equal(await sbx.files.read(name, { user: 'root' }), 'for root')
      const st = await sbx.files.getInfo(`/root/${name}`, { user: 'root' })
      assert.equal(st.owner, 'root')
      assert.equal(st.group, 'root')
    })
  })

  describe('errors', () => {
    test('a file emptied or created by a command reads as empty text and bytes', T, async () => {
      const p = `${dir}/touched.txt`
      await sbx.commands.run(`touch ${p}`)
      assert.equal(await sbx.files.read(p), '')
      assert.equal((await sbx.files.read(p, { format: 'bytes' })).length, 0)
    })

    test('reading a missing file throws FileNotFoundError', T, async () => {
      const err = await rejection(sbx.files.read(`${dir}/does-not-exist.txt`))
      assert.ok(err instanceof FileNotFoundError, `got ${err?.name}: ${err?.message}`)
      assert.ok(err instanceof NotFoundError)
    })

    test('reading a directory throws InvalidArgumentError', T, async () => {
      const err = await rejection(sbx.files.read(dir))
      assert.ok(err instanceof InvalidArgumentError, `got ${err?.name}: ${err?.message}`)
    })

    test('writing onto a directory fails', T, async () => {
      const err = await rejection(sbx.files.write(dir, 'nope'))
      assert.ok(err instanceof InvalidArgumentError, `got ${err?.name}: ${err?.message}`)
    })

    test('getInfo / list / rename of a missing path throw FileNotFoundError', T, async () => {
      for (const [what, call] of [
        ['getInfo', () => sbx.files.getInfo(`${dir}/missing`)],
        ['list', () => sbx.files.list(`${dir}/missing-dir`)],
        ['rename', () => sbx.files.rename(`${dir}/missing`, `${dir}/missing2`)],
      ]) {
        const err = await rejection(call(), what)
        assert.ok(err instanceof FileNotFoundError, `${what}: got ${err?.name}: ${err?.message}`)
      }
    })

    test('list of a file throws InvalidArgumentError', T, async () => {
      const p = `${dir}/not-a-dir.txt`
      await sbx.files.write(p, 'x')
      const err = await rejection(sbx.files.list(p))
      assert.ok(err instanceof InvalidArgumentError, `got ${err?.name}: ${err?.message}`)
    })

    test('an unknown user is refused with AuthenticationError (/files and RPC)', T, async () => {
      for (const [what, call] of [
        ['read', () => sbx.files.read('x.txt', { user: 'ghost-user' })],
        ['write', () => sbx.files.write('x.txt', 'x', { user: 'ghost-user' })],
        ['getInfo', () => sbx.files.getInfo('x.txt', { user: 'ghost-user' })],
      ]) {
        const err = await rejection(call(), what)
        assert.ok(err instanceof AuthenticationError, `${what}: got ${err?.name}: ${err?.message}`)
      }
    })

    test('~otheruser paths are refused with InvalidArgumentError', T, async () => {
      for (const [what, call] of [
        ['getInfo', () => sbx.files.getInfo('~root/x')],
        ['read', () => sbx.files.read('~root/x')],
      ]) {
        const err = await rejection(call(), what)
        assert.ok(err instanceof InvalidArgumentError, `${what}: got ${err?.name}: ${err?.message}`)
      }
    })

    test('malformed uploads are rejected with 400', T, async () => {
      const url = (q = '') => `/files${q}`
      const cases = [
        ['unsupported content type', url(`?path=${encodeURIComponent(`${dir}/bad1`)}`), { 'Content-Type': 'text/plain' }, 'x'],
        ['octet-stream without path', url(), { 'Content-Type': 'application/octet-stream' }, 'x'],
        [
          'unknown content encoding',
          url(`?path=${encodeURIComponent(`${dir}/bad2`)}`),
          { 'Content-Type': 'application/octet-stream', 'Content-Encoding': 'br' },
          'x',
        ],
        [
          'metadata key too long',
          url(`?path=${encodeURIComponent(`${dir}/bad3`)}`),
          { 'Content-Type': 'application/octet-stream', [`X-Metadata-${'k'.repeat(250)}`]: 'v' },
          'x',
        ],
      ]
      for (const [what, u, headers, body] of cases) {
        const res = await envdFetch(sbx, u, { method: 'POST', headers, body })
        assert.equal(res.status, 400, `${what}: status ${res.status} ${await res.text()}`)
        const j = await res.json().catch(() => null)
        if (j) assert.equal(j.code, 400, what)
      }
      const form = new FormData()
      form.append('file', new Blob(['1']), `${dir}/dup.txt`)
      form.append('file', new Blob(['2']), `${dir}/dup.txt`)
      const res = await envdFetch(sbx, url(), { method: 'POST', body: form })
      assert.equal(res.status, 400, `duplicate multipart target: ${res.status} ${await res.text()}`)
    })

    test('download refusing identity with no supported coding is 406', T, async () => {
      const p = `${dir}/enc.txt`
      await sbx.files.write(p, 'enc')
      const res = await envdFetch(sbx, `/files?path=${encodeURIComponent(p)}`, {
        headers: { 'Accept-Encoding': 'br, identity;q=0' },
      })
      assert.equal(res.status, 406)
    })

    test('the raw 404 body follows envd’s REST error shape', T, async () => {
      const res = await envdFetch(sbx, `/files?path=${encodeURIComponent(`${dir}/nope.txt`)}`)
      assert.equal(res.status, 404)
      assert.match(res.headers.get('content-type') ?? '', /application\/json/)
      const body = await res.json()
      assert.equal(body.code, 404)
      assert.equal(typeof body.message, 'string')
      assert.ok(body.message.length > 0)
    })
  })

  describe('directories and metadata', () => {
    test('exists', T, async () => {
      const p = `${dir}/exists.txt`
      assert.equal(await sbx.files.exists(p), false)
      await sbx.files.write(p, 'x')
      assert.equal(await sbx.files.exists(p), true)
      assert.equal(await sbx.files.exists(dir), true)
    })

    test('makeDir creates parents, returns false when it already exists', T, async () => {
      const p = `${dir}/mk/a/b`
      assert.equal(await sbx.files.makeDir(p), true)
      assert.equal(await sbx.files.makeDir(p), false)
      const info = await sbx.files.getInfo(p)
      assert.equal(info.type, FileType.DIR)
      assert.equal(info.owner, 'user')
      assert.equal(info.mode & 0o777, 0o755)
      assert.equal(info.permissions, 'drwxr-xr-x')
      assert.equal((await sbx.files.getInfo(`${dir}/mk/a`)).owner, 'user')
    })

    test('makeDir over an existing file fails', T, async () => {
      const p = `${dir}/mk-file`
      await sbx.files.write(p, 'x')
      const err = await rejection(sbx.files.makeDir(p))
      assert.ok(err instanceof InvalidArgumentError, `got ${err?.name}: ${err?.message}`)
    })

    test('makeDir with a relative path and as root', T, async () => {
      const rel = uniq('mkrel')
      assert.equal(await sbx.files.makeDir(rel), true)
      assert.equal((await sbx.files.getInfo(`${HOME}/${rel}`)).type, FileType.DIR)
      await sbx.files.remove(rel)
      const abs = `/tmp/${uniq('mkroot')}`
      assert.equal(await sbx.files.makeDir(abs, { user: 'root' }), true)
      assert.equal((await sbx.files.getInfo(abs)).owner, 'root')
    })

    test('list with depth', T, async () => {
      const base = `${dir}/tree`
      await sbx.files.write([
        { path: `${base}/a.txt`, data: 'a' },
        { path: `${base}/sub/b.txt`, data: 'bb' },
        { path: `${base}/sub/deeper/c.txt`, data: 'ccc' },
      ])
      const names = (entries) => entries.map((e) => e.path.slice(base.length + 1)).sort()

      const one = await sbx.files.list(base)
      assert.deepEqual(names(one), ['a.txt', 'sub'])
      const a = one.find((e) => e.name === 'a.txt')
      assert.equal(a.type, FileType.FILE)
      assert.equal(a.size, 1)
      assert.equal(a.path, `${base}/a.txt`)
      assert.equal(one.find((e) => e.name === 'sub').type, FileType.DIR)

      assert.deepEqual(names(await sbx.files.list(base, { depth: 2 })), ['a.txt', 'sub', 'sub/b.txt', 'sub/deeper'])
      // Lexical walk order, not just the same set.
      assert.deepEqual(
        (await sbx.files.list(base, { depth: 3 })).map((e) => e.path.slice(base.length + 1)),
        ['a.txt', 'sub', 'sub/b.txt', 'sub/deeper', 'sub/deeper/c.txt'],
      )
      assert.deepEqual(names(await sbx.files.list(base, { depth: 3 })), [
        'a.txt',
        'sub',
        'sub/b.txt',
        'sub/deeper',
        'sub/deeper/c.txt',
      ])
      const deep = (await sbx.files.list(base, { depth: 3 })).find((e) => e.name === 'c.txt')
      assert.equal(deep.size, 3)
    })

    test('list through a symlinked directory keeps the requested path; symlinked subdirs are not followed', T, async () => {
      const base = `${dir}/lnk`
      await sbx.files.write(`${base}/real/inner/f.txt`, 'f')
      await sbx.commands.run(`cd ${base} && ln -s real alias && ln -s ../../real real/inner/loop`)
      const entries = await sbx.files.list(`${base}/alias`, { depth: 3 })
      const paths = entries.map((e) => e.path).sort()
      assert.deepEqual(paths, [`${base}/alias/inner`, `${base}/alias/inner/f.txt`, `${base}/alias/inner/loop`])
      const loop = entries.find((e) => e.name === 'loop')
      assert.equal(loop.type, FileType.DIR)
      assert.equal(loop.symlinkTarget, `${base}/real`)
    })

    test('list of an empty directory is empty', T, async () => {
      const p = `${dir}/empty-dir`
      await sbx.files.makeDir(p)
      assert.deepEqual(await sbx.files.list(p), [])
    })

    test('list with depth < 1 is refused', T, async () => {
      const err = await rejection(sbx.files.list(dir, { depth: 0 }))
      assert.ok(err instanceof InvalidArgumentError)
    })

    test('rename moves files and directories', T, async () => {
      const src = `${dir}/ren-src.txt`
      const dst = `${dir}/renamed/inside/ren-dst.txt`
      await sbx.files.write(src, 'moving')
      const info = await sbx.files.rename(src, dst)
      assert.equal(info.path, dst)
      assert.equal(info.name, 'ren-dst.txt')
      assert.equal(info.type, FileType.FILE)
      assert.equal(await sbx.files.exists(src), false)
      assert.equal(await sbx.files.read(dst), 'moving')
      assert.equal((await sbx.files.getInfo(`${dir}/renamed/inside`)).owner, 'user', 'created parent must belong to the user')

      await sbx.files.write(`${dir}/ren-dir/x.txt`, 'x')
      const d = await sbx.files.rename(`${dir}/ren-dir`, `${dir}/ren-dir2`)
      assert.equal(d.type, FileType.DIR)
      assert.equal(await sbx.files.read(`${dir}/ren-dir2/x.txt`), 'x')
      assert.equal(await sbx.files.exists(`${dir}/ren-dir`), false)
    })

    test('rename replaces an existing destination file', T, async () => {
      await sbx.files.write(`${dir}/rep-a`, 'new')
      await sbx.files.write(`${dir}/rep-b`, 'old')
      await sbx.files.rename(`${dir}/rep-a`, `${dir}/rep-b`)
      assert.equal(await sbx.files.read(`${dir}/rep-b`), 'new')
    })

    test('remove deletes files and whole directory trees; missing paths are fine', T, async () => {
      await sbx.files.write(`${dir}/rm/a/b/c.txt`, 'c')
      await sbx.files.write(`${dir}/rm-file.txt`, 'f')
      await sbx.files.remove(`${dir}/rm-file.txt`)
      assert.equal(await sbx.files.exists(`${dir}/rm-file.txt`), false)
      await sbx.files.remove(`${dir}/rm`)
      assert.equal(await sbx.files.exists(`${dir}/rm`), false)
      await sbx.files.remove(`${dir}/never-existed`)
    })

    test('getInfo of a file: type, size, mode, permissions, owner, group, mtime', T, async () => {
      const p = `${dir}/info.txt`
      const before = Date.now()
      await sbx.files.write(p, '12345')
      const info = await sbx.files.getInfo(p)
      assert.equal(info.name, 'info.txt')
      assert.equal(info.path, p)
      assert.equal(info.type, FileType.FILE)
      assert.equal(info.size, 5)
      assert.equal(info.mode & 0o777, 0o644)
      assert.equal(info.permissions, '-rw-r--r--')
      assert.equal(info.owner, 'user')
      assert.equal(info.group, 'user')
      assert.ok(info.modifiedTime instanceof Date)
      assert.ok(Math.abs(info.modifiedTime.getTime() - before) < 60_000, `mtime ${info.modifiedTime.toISOString()}`)
      assert.equal(info.symlinkTarget, undefined)
      assert.equal(info.metadata, undefined)
    })

    test('getInfo reflects chmod done by a command', T, async () => {
      const p = `${dir}/chmod.sh`
      await sbx.files.write(p, '#!/bin/sh\necho ran\n')
      await sbx.commands.run(`chmod 750 ${p}`)
      const info = await sbx.files.getInfo(p)
      assert.equal(info.mode & 0o777, 0o750)
      assert.equal(info.permissions, '-rwxr-x---')
      assert.equal((await sbx.commands.run(p)).stdout, 'ran\n')
    })

    test('getInfo of a directory', T, async () => {
      const info = await sbx.files.getInfo(dir)
      assert.equal(info.type, FileType.DIR)
      assert.equal(info.name, dir.split('/').pop())
      assert.equal(info.permissions, 'drwxr-xr-x')
      assert.equal(info.owner, 'user')
      const home = await sbx.files.getInfo(HOME)
      assert.equal(home.owner, 'user')
      assert.equal(home.group, 'user')
    })

    test('makeDir entry details: 0755, drwxr-xr-x, owned by the user, non-zero size; files listed without symlinkTarget', T, async () => {
      const p = `${dir}/details`
      await sbx.files.makeDir(`${p}/sub`)
      await sbx.files.write(`${p}/f.txt`, 'Hello, World!')
      const d = await sbx.files.getInfo(`${p}/sub`)
      assert.equal(d.type, FileType.DIR)
      assert.equal(d.mode, 0o755)
      assert.equal(d.permissions, 'drwxr-xr-x')
      assert.equal(d.owner, 'user')
      assert.equal(d.group, 'user')
      assert.ok(d.size > 0, `directory size ${d.size}`)
      const listed = await sbx.files.list(p)
      assert.deepEqual(listed.map((e) => [e.name, e.type]), [['f.txt', FileType.FILE], ['sub', FileType.DIR]])
      const f = listed[0]
      assert.equal(f.size, 13)
      assert.equal(f.mode, 0o644)
      assert.equal(f.symlinkTarget, undefined)
      assert.ok(f.modifiedTime instanceof Date)
    })

    test('symlinks: target type, symlinkTarget, L permissions; dangling links are not listed', T, async () => {
      const base = `${dir}/links`
      await sbx.files.write(`${base}/target.txt`, 'target')
      await sbx.commands.run(`cd ${base} && ln -s target.txt link && ln -s nowhere dangling`)
      const info = await sbx.files.getInfo(`${base}/link`)
      assert.equal(info.path, `${base}/link`)
      assert.equal(info.type, FileType.FILE)
      assert.equal(info.symlinkTarget, `${base}/target.txt`)
      assert.match(info.permissions, /^L/)
      assert.equal(await sbx.files.read(`${base}/link`), 'target')
      const names = (await sbx.files.list(base)).map((e) => e.name).sort()
      assert.deepEqual(names, ['link', 'target.txt'])
    })

    test('write with metadata; getInfo and list return it; keys are lower-cased', T, async () => {
      const p = `${dir}/meta.txt`
      const info = await sbx.files.write(p, 'with metadata', { metadata: { author: 'me', Project: 'capsule' } })
      assert.deepEqual(info.metadata, { author: 'me', project: 'capsule' })
      const st = await sbx.files.getInfo(p)
      assert.deepEqual(st.metadata, { author: 'me', project: 'capsule' })
      const listed = (await sbx.files.list(dir)).find((e) => e.name === 'meta.txt')
      assert.deepEqual(listed.metadata, { author: 'me', project: 'capsule' })
      const xattr = await sbx.commands.run(
        `python3 -c "import os,sys; print(os.getxattr(sys.argv[1], 'user.e2b.author').decode())" ${p} 2>/dev/null || getfattr --only-values -n user.e2b.author ${p}`,
      )
      assert.equal(xattr.stdout.trim(), 'me')
    })

    test('rename keeps metadata and reports it; xattrs set by a command show up as metadata', T, async () => {
      const src = `${dir}/meta-ren-a.txt`
      const dst = `${dir}/meta-ren-b.txt`
      await sbx.files.write(src, 'x', { metadata: { stage: 'moved' } })
      const info = await sbx.files.rename(src, dst)
      assert.deepEqual(info.metadata, { stage: 'moved' })

      const p = `${dir}/meta-cmd.txt`
      await sbx.files.write(p, 'no metadata yet')
      await sbx.commands.run(
        `setfattr -n user.e2b.origin -v command ${p} 2>/dev/null || ` +
          `python3 -c "import os,sys; os.setxattr(sys.argv[1], 'user.e2b.origin', b'command')" ${p}`,
      )
      assert.deepEqual((await sbx.files.getInfo(p)).metadata, { origin: 'command' })
    })

    test('an upload without metadata clears earlier metadata', T, async () => {
      const p = `${dir}/meta2.txt`
      await sbx.files.write(p, 'v1', { metadata: { a: '1', b: '2' } })
      await sbx.files.write(p, 'v2', { metadata: { c: '3' } })
      assert.deepEqual((await sbx.files.getInfo(p)).metadata, { c: '3' })
      await sbx.files.write(p, 'v3')
      assert.equal((await sbx.files.getInfo(p)).metadata, undefined)
    })

    test('metadata on a multi-file write applies to every file', T, async () => {
      const infos = await sbx.files.write(
        [
          { path: `${dir}/mm/1.txt`, data: '1' },
          { path: `${dir}/mm/2.txt`, data: '2' },
        ],
        { metadata: { batch: 'b1' } },
      )
      assert.equal(infos.length, 2)
      for (const i of infos) assert.deepEqual(i.metadata, { batch: 'b1' })
      for (const f of ['1.txt', '2.txt']) {
        assert.deepEqual((await sbx.files.getInfo(`${dir}/mm/${f}`)).metadata, { batch: 'b1' })
      }
    })
  })

  describe('uploadUrl / downloadUrl (unsigned in debug mode, signed on a server)', () => {
    test('downloadUrl is a plain /files URL that serves the file', T, async () => {
      const p = `${dir}/dl.txt`
      await sbx.files.write(p, 'download me')
      const url = await sbx.downloadUrl(p)
      const u = new URL(url)
      assert.equal(u.origin, FULLSTACK ? process.env.E2B_SANDBOX_URL : ENVD_URL)
      assert.equal(u.pathname, '/files')
      assert.equal(u.searchParams.get('path'), p)
      // signed when the sandbox has an access token (always, on a server)
      if (FULLSTACK) assert.match(u.searchParams.get('signature'), /^v1_/)
      else assert.equal(u.searchParams.get('signature'), null)
      const res = await fetch(url)
      assert.equal(res.status, 200)
      assert.equal(await res.text(), 'download me')
      assert.match(res.headers.get('content-disposition') ?? '', /filename=.*dl\.txt/)
    })

    test('download with Range answers 206 with the slice', T, async () => {
      const p = `${dir}/range.txt`
      await sbx.files.write(p, '0123456789')
      const res = await fetch(await sbx.downloadUrl(p), { headers: { Range: 'bytes=2-5', 'Accept-Encoding': 'identity' } })
      assert.equal(res.status, 206)
      assert.equal(await res.text(), '2345')
    })

    test('uploadUrl accepts a multipart POST and reports the stored path', T, async () => {
      const name = `${uniq('up')}.txt`
      const url = await sbx.uploadUrl(name)
      if (FULLSTACK) assert.match(new URL(url).searchParams.get('signature'), /^v1_/)
      else assert.equal(new URL(url).searchParams.get('signature'), null)
      const form = new FormData()
      form.append('file', new Blob(['uploaded via url']))
      const res = await fetch(url, { method: 'POST', body: form })
      assert.equal(res.status, 200, await res.clone().text())
      const body = await res.json()
      assert.deepEqual(body, [{ path: `${HOME}/${name}`, name, type: 'file' }])
      assert.equal(await sbx.files.read(name), 'uploaded via url')
      assert.equal((await sbx.files.getInfo(name)).owner, 'user')
      await sbx.files.remove(name)
    })

    test('uploadUrl as root stores under /root', T, async () => {
      const name = `${uniq('up-root')}.txt`
      const url = await sbx.uploadUrl(name, { user: 'root' })
      assert.equal(new URL(url).searchParams.get('username'), 'root')
      const form = new FormData()
      form.append('file', new Blob(['root upload']), name)
      const res = await fetch(url, { method: 'POST', body: form })
      assert.equal(res.status, 200, await res.clone().text())
      assert.deepEqual(await res.json(), [{ path: `/root/${name}`, name, type: 'file' }])
      const st = await sbx.files.getInfo(`/root/${name}`)
      assert.equal(st.owner, 'root')
    })

    test('multipart upload without a path query uses each part’s filename as the path', T, async () => {
      const form = new FormData()
      form.append('file', new Blob(['one']), `${dir}/mp/one.txt`)
      form.append('file', new Blob(['two']), `${dir}/mp/two.txt`)
      form.append('other', 'ignored')
      const res = await envdFetch(sbx, `/files`, { method: 'POST', body: form })
      assert.equal(res.status, 200, await res.clone().text())
      const body = await res.json()
      assert.deepEqual(
        body.map((e) => e.path).sort(),
        [`${dir}/mp/one.txt`, `${dir}/mp/two.txt`],
      )
      assert.equal(await sbx.files.read(`${dir}/mp/two.txt`), 'two')
    })

    test('signature expiration needs a secured sandbox (client-side check); a server sandbox is one', T, async () => {
      if (!FULLSTACK) {
        await assert.rejects(sbx.downloadUrl('x', { useSignatureExpiration: 60 }), InvalidArgumentError)
        return
      }
      const p = `${dir}/exp.txt`
      await sbx.files.write(p, 'expiring')
      const res = await fetch(await sbx.downloadUrl(p, { useSignatureExpiration: 60 }))
      assert.equal(await res.text(), 'expiring')
    })
  })
})
