// Times Sandbox.create() → the first commands.run() with the unmodified
// E2B SDK against the server named by E2B_API_URL / E2B_SANDBOX_URL;
// `capsule bench proxy` runs it. Prints one JSON line: the samples in ms.
//
//   node bench-create.mjs N TEMPLATE
import { Sandbox } from 'e2b'

const n = Number(process.argv[2] ?? 10)
const template = process.argv[3] ?? 'base'
const samples = []
// one unmeasured round first: the server may build its warm snapshot
for (let i = 0; i <= n; i++) {
  const t0 = performance.now()
  const sbx = await Sandbox.create(template, { timeoutMs: 120_000 })
  const r = await sbx.commands.run('true')
  const ms = performance.now() - t0
  await sbx.kill()
  if (r.exitCode !== 0) throw new Error(`exit code ${r.exitCode}`)
  if (i > 0) samples.push(ms)
  if (i === 0) await new Promise((resolve) => setTimeout(resolve, 20_000)) // the warm snapshot build
}
console.log(JSON.stringify({ samples_ms: samples }))
