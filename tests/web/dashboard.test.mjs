// The dashboard in a real browser (Debian's chromium through
// playwright-core) against a real `capsule serve` with real VMs: see
// run.sh. The steps run in order and share the server's state (one admin,
// one member, capsules).
import { describe, before, after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const base = process.env.CAPSULE_URL;
const admin = JSON.parse(readFileSync(process.env.CAPSULE_ADMIN_FILE, 'utf8'));
const shots = process.env.SCREENSHOT_DIR;
const VM = 6 * 60_000; // a VM boots under TCG here: minutes, not seconds
const widths = [
	['laptop', { width: 1280, height: 800 }],
	['phone', { width: 390, height: 844 }]
];
const member = { email: 'member@example.com', password: 'member password 1', name: 'Mem Ber' };

let browser;
const pages = {}; // who → { ctx, page, csp: [], errors: [] }

async function open(who) {
	const ctx = await browser.newContext({ viewport: widths[0][1], acceptDownloads: true });
	const page = await ctx.newPage();
	const rec = { ctx, page, csp: [], errors: [] };
	// CSP violations, reported by the page itself (the init script runs
	// outside the page's CSP).
	await page.exposeFunction('__cspViolation', (v) => rec.csp.push(v));
	await page.addInitScript(() => {
		document.addEventListener('securitypolicyviolation', (e) =>
			window.__cspViolation(`${e.violatedDirective} blocked ${e.blockedURI} (${e.sourceFile}:${e.lineNumber})`)
		);
	});
	page.on('pageerror', (err) => rec.errors.push(String(err)));
	page.setDefaultTimeout(30_000);
	pages[who] = rec;
	return rec;
}

/** scan runs axe-core on the page: no serious or critical violation. */
async function scan(page, name) {
	await page.evaluate(axeSource);
	const res = await page.evaluate(() =>
		window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } })
	);
	const bad = res.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
	assert.deepEqual(
		bad.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(', ')}`),
		[],
		`axe on ${name}`
	);
}

/** visit scans a page and screenshots it at both widths, in both themes. */
async function visit(page, name) {
	for (const theme of ['light', 'dark']) {
		await page.evaluate((t) => (document.documentElement.dataset.theme = t), theme);
		for (const [label, size] of widths) {
			await page.setViewportSize(size);
			await page.waitForTimeout(100); // layout after the resize (no state to wait for)
			// Nothing widens the page past the viewport (wide tables scroll in their own box).
			const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
			assert.ok(wide <= 0, `${name} (${theme}, ${label}) is ${wide}px wider than the viewport`);
			await scan(page, `${name} (${theme}, ${label})`);
			await page.screenshot({ path: path.join(shots, `${name}-${label}-${theme}.png`), fullPage: true });
		}
	}
	await page.evaluate(() => (document.documentElement.dataset.theme = localStorage.getItem('capsule-theme') || 'light'));
	await page.setViewportSize(widths[0][1]);
}

async function signIn(page, email, password) {
	await page.goto(`${base}/login`);
	await page.getByLabel('E-mail').fill(email);
	await page.getByLabel('Password').fill(password);
	await page.getByRole('button', { name: 'Sign in' }).click();
	await page.waitForURL(`${base}/dashboard/capsules`);
}

function row(page, id) {
	return page.locator(`[data-testid=capsule-row][data-id="${id}"]`);
}

async function createCapsule(page, template) {
	await page.goto(`${base}/dashboard/capsules`);
	const before = await page.locator('[data-testid=capsule-row]').evaluateAll((rs) => rs.map((r) => r.dataset.id));
	await page.getByRole('button', { name: /New capsule|Create your first capsule/ }).first().click();
	const dialog = page.getByRole('dialog', { name: 'New capsule' });
	await dialog.getByLabel('Template').fill(template);
	await dialog.getByLabel('Memory (MiB)').fill('512');
	await dialog.getByRole('button', { name: 'Create' }).click();
	await dialog.waitFor({ state: 'hidden', timeout: VM });
	const ids = await page.locator('[data-testid=capsule-row]').evaluateAll((rs) => rs.map((r) => r.dataset.id));
	const id = ids.find((x) => !before.includes(x));
	assert.ok(id, 'a new capsule row');
	await row(page, id).getByTestId('state').filter({ hasText: 'running' }).waitFor({ timeout: VM });
	return id;
}

async function apiAs(page, method, p, body) {
	return page.evaluate(
		async ([method, p, body]) => {
			const csrf = (document.cookie.match(/(?:^|; )capsule_csrf=([^;]*)/) || [])[1] || '';
			const r = await fetch(p, {
				method,
				headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
				body: body ? JSON.stringify(body) : undefined
			});
			return { status: r.status, body: await r.text() };
		},
		[method, p, body]
	);
}

/** tar makes an uncompressed POSIX tar archive of { name: text } files. */
function tar(files) {
	const blocks = [];
	for (const [name, text] of Object.entries(files)) {
		const data = Buffer.from(text);
		const h = Buffer.alloc(512);
		const put = (off, len, str) => h.write(str.padEnd(len, '\0').slice(0, len), off, 'latin1');
		const oct = (off, len, n) => put(off, len, n.toString(8).padStart(len - 1, '0') + '\0');
		put(0, 100, name);
		oct(100, 8, 0o644);
		oct(108, 8, 0);
		oct(116, 8, 0);
		oct(124, 12, data.length);
		oct(136, 12, Math.floor(Date.now() / 1000));
		put(148, 8, '        ');
		put(156, 1, '0');
		put(257, 6, 'ustar');
		put(263, 2, '00');
		let sum = 0;
		for (const b of h) sum += b;
		put(148, 8, sum.toString(8).padStart(6, '0') + '\0 ');
		blocks.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512));
	}
	blocks.push(Buffer.alloc(1024));
	return Buffer.concat(blocks);
}

describe('dashboard', { concurrency: false }, () => {
	let capsule; // the capsule the steps share
	let adminPage;

	before(async () => {
		browser = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--no-sandbox'] });
		adminPage = (await open('admin')).page;
	});

	after(async () => {
		// Destroy what the steps left (the server's shutdown would too).
		if (adminPage) {
			const out = await apiAs(adminPage, 'GET', '/v1/sandboxes').catch(() => null);
			for (const s of out ? JSON.parse(out.body).sandboxes || [] : []) {
				await apiAs(adminPage, 'DELETE', `/v1/sandboxes/${s.id}`).catch(() => {});
			}
		}
		for (const rec of Object.values(pages)) {
			assert.deepEqual(rec.csp, [], 'Content-Security-Policy violations');
			assert.deepEqual(rec.errors, [], 'uncaught page errors');
		}
		await browser?.close();
	});

	test('sign-in pages', async () => {
		const page = adminPage;
		await page.goto(`${base}/`);
		await page.waitForURL(`${base}/login`);
		await visit(page, 'login');
		await page.goto(`${base}/signup`);
		await page.getByText('Sign-up is by invitation').waitFor();
		await visit(page, 'signup');
	});

	test('sign in: the session is an HttpOnly cookie, not in storage', async () => {
		const page = adminPage;
		await page.goto(`${base}/login`);
		await page.getByLabel('E-mail').fill(admin.email);
		await page.getByLabel('Password').fill('wrong password');
		await page.getByRole('button', { name: 'Sign in' }).click();
		await page.getByRole('alert').filter({ hasText: /wrong/i }).waitFor();
		await signIn(page, admin.email, admin.password);
		const cookies = await pages.admin.ctx.cookies();
		const sess = cookies.find((c) => c.name === 'capsule_session');
		assert.ok(sess && sess.httpOnly && sess.sameSite === 'Strict', `session cookie ${JSON.stringify(sess)}`);
		const visible = await page.evaluate(() => ({ cookie: document.cookie, storage: JSON.stringify({ ...localStorage, ...sessionStorage }) }));
		assert.ok(!visible.cookie.includes('capsule_session'), 'the page reads the session cookie');
		assert.ok(!visible.storage.includes(sess.value), 'the session token is in web storage');
		// The admin sees the admin entry.
		await page.getByRole('link', { name: 'Admin', exact: true }).waitFor();
		await page.getByText('No capsules yet.').waitFor();
		await visit(page, 'capsules-empty');
	});

	test('create a capsule', { timeout: VM + 60_000 }, async () => {
		const page = adminPage;
		capsule = await createCapsule(page, 'base');
		await page.getByTestId('running-badge').filter({ hasText: /^1$/ }).waitFor();
		await visit(page, 'capsules');
	});

	test('terminal: echo hi', { timeout: 3 * 60_000 }, async () => {
		const page = adminPage;
		await row(page, capsule).getByRole('link').click();
		await page.waitForURL((u) => u.pathname === `/dashboard/capsules/${capsule}`);
		await page.getByTestId('terminal-status').filter({ hasText: 'connected' }).waitFor({ timeout: 60_000 });
		await page.getByTestId('terminal').click();
		await page.keyboard.type('echo hi\n');
		await page.waitForFunction(() =>
			[...document.querySelectorAll('[data-testid=terminal] .xterm-rows > div')].some((r) => r.textContent.trim() === 'hi')
		);
		await visit(page, 'capsule-terminal');
	});

	test('terminal: after a reload, the same shell with its scrollback', { timeout: 3 * 60_000 }, async () => {
		const page = adminPage;
		const rowsMatching = (re) =>
			page.evaluate(
				(src) => [...document.querySelectorAll('[data-testid=terminal] .xterm-rows > div')].map((r) => r.textContent.trim()).filter((t) => new RegExp(src).test(t)),
				re.source
			);
		await page.getByTestId('terminal').click();
		await page.keyboard.type('echo pid-$$\n');
		await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=terminal] .xterm-rows > div')].some((r) => /^pid-\d+$/.test(r.textContent.trim())));
		const [line] = await rowsMatching(/^pid-\d+$/);
		const pid = line.slice(4);
		// The shell's pid is kept per capsule in sessionStorage (not a secret).
		assert.equal(await page.evaluate((id) => sessionStorage.getItem(`capsule-terminal:${id}`), capsule), pid);
		await page.reload();
		await page.getByTestId('terminal-status').filter({ hasText: 'connected' }).waitFor({ timeout: 60_000 });
		// The earlier output is back (the server's scrollback)…
		await page.waitForFunction(
			(pid) => {
				const rows = [...document.querySelectorAll('[data-testid=terminal] .xterm-rows > div')].map((r) => r.textContent.trim());
				return rows.includes('hi') && rows.includes(`pid-${pid}`);
			},
			pid,
			{ timeout: 30_000 }
		);
		// …and the same shell answers.
		await page.getByTestId('terminal').click();
		await page.keyboard.type('echo again-$$\n');
		await page.waitForFunction(
			(pid) => [...document.querySelectorAll('[data-testid=terminal] .xterm-rows > div')].some((r) => r.textContent.trim() === `again-${pid}`),
			pid,
			{ timeout: 30_000 }
		);
		// A shell that is gone: the saved pid is refused and a new shell starts.
		await page.evaluate((id) => sessionStorage.setItem(`capsule-terminal:${id}`, '999999'), capsule);
		await page.reload();
		await page.getByTestId('terminal-status').filter({ hasText: 'connected' }).waitFor({ timeout: 60_000 });
		await page.waitForFunction((id) => /^\d+$/.test(sessionStorage.getItem(`capsule-terminal:${id}`) || '') && sessionStorage.getItem(`capsule-terminal:${id}`) !== '999999', capsule);
		const fresh = await page.evaluate((id) => sessionStorage.getItem(`capsule-terminal:${id}`), capsule);
		assert.notEqual(fresh, pid, 'a new shell has a new pid');
		await page.getByTestId('terminal').click();
		await page.keyboard.type('echo new-$$\n');
		await page.waitForFunction(
			(pid) => [...document.querySelectorAll('[data-testid=terminal] .xterm-rows > div')].some((r) => r.textContent.trim() === `new-${pid}`),
			fresh,
			{ timeout: 30_000 }
		);
	});

	test('files: upload, preview, download, folder, delete', { timeout: 3 * 60_000 }, async () => {
		const page = adminPage;
		await page.getByRole('tab', { name: 'Files' }).click();
		const content = `hello from the dashboard test ${Date.now()}\n`;
		await page.getByTestId('upload-input').setInputFiles({ name: 'hello.txt', mimeType: 'text/plain', buffer: Buffer.from(content) });
		const file = page.locator('[data-testid=file-row][data-name="hello.txt"]');
		await file.waitFor();
		await file.getByRole('button', { name: 'hello.txt', exact: true }).click();
		await page.getByTestId('preview').filter({ hasText: content.trim() }).waitFor();
		const [dl] = await Promise.all([page.waitForEvent('download'), file.getByRole('button', { name: 'Download hello.txt' }).click()]);
		assert.equal(dl.suggestedFilename(), 'hello.txt');
		const chunks = [];
		for await (const c of await dl.createReadStream()) chunks.push(c);
		assert.equal(Buffer.concat(chunks).toString(), content);
		await page.getByLabel('New folder name').fill('made-by-test');
		await page.getByRole('button', { name: 'Create folder' }).click();
		const dir = page.locator('[data-testid=file-row][data-name="made-by-test"]');
		await dir.waitFor();
		await visit(page, 'capsule-files');
		page.once('dialog', (d) => d.accept());
		await dir.getByRole('button', { name: 'Delete made-by-test' }).click();
		await dir.waitFor({ state: 'detached' });
		await page.getByRole('tab', { name: 'Facts' }).click();
		await page.getByText('Resources').waitFor();
		await visit(page, 'capsule-facts');
	});

	test('metrics: the capsule’s CPU, memory and disk charts draw with data; the range is kept in the URL', { timeout: 3 * 60_000 }, async () => {
		const page = adminPage;
		await page.goto(`${base}/dashboard/capsules/${capsule}`);
		await page.getByRole('tab', { name: 'Metrics' }).click();
		await page.waitForURL(/[?&]tab=metrics/);
		await page.getByRole('button', { name: '5m', exact: true }).click();
		await page.waitForURL(/[?&]range=5m/);
		await page.getByTestId('metrics-source').filter({ hasText: 'Live' }).waitFor();
		// The host samples every 0.5 s: points arrive with the silent polling.
		await page.waitForFunction(() => Number(document.querySelector('[data-testid=metrics]')?.dataset.points) >= 2, null, { timeout: 60_000 });
		for (const chart of ['cpu', 'mem', 'disk']) {
			// Chart.js drew on the canvas: it has painted pixels.
			const painted = await page.getByTestId(`chart-${chart}`).evaluate((c) => {
				const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
				let n = 0;
				for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
				return n;
			});
			assert.ok(painted > 500, `the ${chart} chart is blank (${painted} painted pixels)`);
		}
		// A reload keeps the tab and the range (they are in the URL).
		await page.reload();
		await page.getByRole('button', { name: '5m', exact: true, pressed: true }).waitFor();
		await page.getByTestId('metrics').waitFor();
		await visit(page, 'capsule-metrics');
	});

	test('capsules stats: the cards and charts draw with data, the range is in the URL, polling is silent', { timeout: 3 * 60_000 }, async () => {
		const page = adminPage;
		await page.goto(`${base}/dashboard/capsules`);
		await page.getByRole('link', { name: 'Stats', exact: true }).click();
		await page.waitForURL(`${base}/dashboard/capsules/stats`);
		await page.getByRole('heading', { name: 'Capsule stats' }).waitFor();
		await page.getByRole('button', { name: '5m', exact: true }).click();
		await page.waitForURL(/[?&]range=5m/);
		await page.locator('[data-testid=stats][data-range="5m"]').waitFor();
		await page.getByTestId('live-badge').filter({ hasText: 'Live' }).waitFor();
		// One capsule runs: Now is read live, and a 10 s sample soon holds it.
		const card = (k) => page.getByTestId(`card-${k}`);
		await card('running').getByTestId('now').filter({ hasText: /^1$/ }).waitFor();
		await card('vcpus').getByTestId('now').filter({ hasText: /^1$/ }).waitFor();
		await card('memory').getByTestId('now').filter({ hasText: /^512 MiB$/ }).waitFor();
		await card('running').getByTestId('peak').filter({ hasText: /^[1-9]\d*$/ }).waitFor();
		// The charts have datasets with points, a bucket holds the running capsule, and they painted.
		await page.waitForFunction(() => Number(document.querySelector('[data-testid=stats]')?.dataset.points) >= 2 * 30, null, { timeout: 60_000 });
		await page.waitForFunction(() => Number(document.querySelector('[data-testid=stats]')?.dataset.runningMax) >= 1, null, { timeout: 60_000 });
		for (const chart of ['count', 'resources']) {
			const painted = await page.getByTestId(`chart-${chart}`).evaluate((c) => {
				const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
				let n = 0;
				for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
				return n;
			});
			assert.ok(painted > 500, `the ${chart} chart is blank (${painted} painted pixels)`);
		}
		// Polling is silent: two more answers arrive, the loading state never shows again.
		await page.evaluate(() => {
			window.__skeletons = 0;
			new MutationObserver(() => {
				if (document.querySelector('[aria-label="Loading stats"]')) window.__skeletons++;
			}).observe(document.body, { childList: true, subtree: true });
		});
		const isStats = (r) => new URL(r.url()).pathname === '/v1/sandboxes/stats';
		await page.waitForResponse(isStats, { timeout: 30_000 });
		await page.waitForResponse(isStats, { timeout: 30_000 });
		// A range switch keeps the old charts until the new answer.
		await page.getByRole('button', { name: '1h', exact: true }).click();
		await page.locator('[data-testid=stats][data-range="1h"]').waitFor();
		await page.waitForURL(/[?&]range=1h/);
		assert.equal(await page.evaluate(() => window.__skeletons), 0, 'the loading state showed after the first answer');
		// A reload keeps the range (it is in the URL).
		await page.reload();
		await page.getByRole('button', { name: '1h', exact: true, pressed: true }).waitFor();
		await page.getByTestId('chart-count').waitFor();
		await visit(page, 'capsule-stats');
	});

	test('the capsule list with 1,000 capsules is windowed: few rows in the DOM, every row reachable by scrolling', async () => {
		const page = adminPage;
		const now = Date.now();
		const fake = Array.from({ length: 1000 }, (_, i) => ({
			id: i.toString(16).padStart(32, '0'), template: 'base', state: i % 3 ? 'running' : 'paused', vcpus: 1, memory_mb: 512,
			timeout_sec: 3600, allow_internet_access: true, allow_public_traffic: false, auto_pause: true, auto_resume: false,
			metadata: { owner: `user-${i % 17}`, job: `job-${i}` }, created_at: new Date(now - i * 60_000).toISOString()
		}));
		const listURL = (u) => u.pathname === '/v1/sandboxes' && u.search === '?limit=200';
		await page.route(listURL, (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify({ sandboxes: fake, next_cursor: '' }) }));
		try {
			await page.goto(`${base}/dashboard/capsules`);
			const list = page.getByTestId('capsule-list');
			await page.locator('[data-testid=capsule-list][data-rows="1000"]').waitFor();
			assert.equal(await list.getAttribute('aria-rowcount'), '1001');
			await row(page, fake[0].id).waitFor();
			const rendered = () => page.locator('[data-testid=capsule-row]').count();
			assert.ok((await rendered()) <= 60, `${await rendered()} rows in the DOM`);
			// The page is as tall as all the rows: scrolling reaches the last one.
			await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight));
			await row(page, fake[999].id).waitFor();
			assert.equal(await row(page, fake[999].id).getAttribute('aria-rowindex'), '1001');
			assert.ok((await rendered()) <= 60, `${await rendered()} rows in the DOM at the end`);
			// The middle, and back to the top.
			await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight / 2));
			await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=capsule-row]')].some((r) => Number(r.getAttribute('aria-rowindex')) > 400 && Number(r.getAttribute('aria-rowindex')) < 600));
			await page.evaluate(() => window.scrollTo(0, 0));
			await row(page, fake[0].id).waitFor();
			// Rows are ordered and contiguous in the DOM.
			const idx = await page.locator('[data-testid=capsule-row]').evaluateAll((rs) => rs.map((r) => Number(r.getAttribute('aria-rowindex'))));
			assert.deepEqual(idx, idx.map((_, i) => idx[0] + i));
			// (The full page is 44,000 px tall: the scan and one viewport's screenshot.)
			await scan(page, 'capsules-1000');
			await page.screenshot({ path: path.join(shots, 'capsules-1000-laptop-light.png') });
		} finally {
			await page.unroute(listURL);
		}
	});

	test('pause, resume, snapshot, create from the snapshot', { timeout: 3 * VM }, async () => {
		const page = adminPage;
		await page.goto(`${base}/dashboard/capsules`);
		const r = row(page, capsule);
		await r.getByRole('button', { name: 'Pause' }).click();
		await r.getByTestId('state').filter({ hasText: 'paused' }).waitFor({ timeout: VM });
		await page.getByTestId('running-badge').filter({ hasText: /^0$/ }).waitFor();
		await r.getByRole('button', { name: 'Resume' }).click();
		await r.getByTestId('state').filter({ hasText: 'running' }).waitFor({ timeout: VM });
		await r.getByRole('button', { name: 'Snapshot' }).click();
		const dialog = page.getByRole('dialog', { name: 'Snapshot capsule' });
		await dialog.getByLabel('Snapshot name').fill('web-snap');
		await dialog.getByRole('button', { name: 'Create snapshot' }).click();
		await page.getByRole('status').filter({ hasText: 'Snapshot “web-snap” created' }).waitFor({ timeout: VM });
		const fromSnap = await createCapsule(page, 'web-snap');
		page.once('dialog', (d) => d.accept());
		await row(page, fromSnap).getByRole('button', { name: 'Destroy' }).click();
		await row(page, fromSnap).waitFor({ state: 'detached', timeout: VM });
	});

	test('create and revoke an API key', async () => {
		const page = adminPage;
		await page.getByRole('link', { name: 'API keys' }).click();
		await page.getByLabel('Key name').fill('web-test');
		await page.getByRole('button', { name: 'Create key' }).click();
		const key = (await page.getByTestId('new-key').textContent()).trim();
		assert.match(key, /^e2b_[0-9a-f]{40}$/);
		let resp = await fetch(`${base}/v1/sandboxes`, { headers: { 'X-API-Key': key } });
		assert.equal(resp.status, 200, 'the new key works');
		await visit(page, 'keys');
		page.once('dialog', (d) => d.accept());
		await page.getByRole('button', { name: 'Revoke web-test' }).click();
		await page.locator('[data-testid=key-row][data-name="web-test"]').waitFor({ state: 'detached' });
		resp = await fetch(`${base}/v1/sandboxes`, { headers: { 'X-API-Key': key } });
		assert.equal(resp.status, 401, 'the revoked key is refused');
	});

	test('invite a member, who signs up; change their role', async () => {
		const page = adminPage;
		await page.getByRole('link', { name: 'Team' }).click();
		await page.getByLabel('E-mail').fill(member.email);
		await page.getByRole('button', { name: 'Add' }).click();
		const notice = await page.getByRole('status').filter({ hasText: 'invitation created' }).textContent();
		const link = notice.match(/(http\S+\/signup\?invitation=\S+)/)[1];
		const mp = (await open('member')).page;
		await mp.goto(link);
		await mp.getByLabel('Name').fill(member.name);
		await mp.getByLabel('E-mail').fill(member.email);
		await mp.getByLabel('Password').fill(member.password);
		await mp.getByRole('button', { name: 'Create account' }).click();
		await mp.waitForURL(`${base}/dashboard/capsules`);
		await page.reload();
		const m = page.locator(`[data-testid=member-row][data-email="${member.email}"]`);
		await m.getByRole('cell', { name: member.name }).waitFor();
		const patched = (r) => r.url().includes('/members/') && r.request().method() === 'PATCH';
		await Promise.all([page.waitForResponse(patched), m.getByLabel(`Role of ${member.email}`).selectOption('admin')]);
		await page.reload();
		assert.equal(await m.getByLabel(`Role of ${member.email}`).inputValue(), 'admin');
		await Promise.all([page.waitForResponse(patched), m.getByLabel(`Role of ${member.email}`).selectOption('member')]);
		await page.reload();
		assert.equal(await m.getByLabel(`Role of ${member.email}`).inputValue(), 'member');
		await visit(page, 'team');
	});

	test('the audit log lists the events', async () => {
		const page = adminPage;
		await page.getByRole('link', { name: 'Audit log' }).click();
		for (const action of ['sandbox.create', 'sandbox.pause', 'sandbox.resume', 'snapshot.create', 'sandbox.destroy', 'api_key.create', 'api_key.revoke', 'invitation.create', 'member.role_change']) {
			await page.locator(`[data-testid=audit-row][data-action="${action}"]`).first().waitFor();
		}
		await page.getByLabel('Resource type').selectOption('api_key');
		await page.getByRole('button', { name: 'Filter' }).click();
		await page.locator('[data-testid=audit-row][data-action="api_key.create"]').first().waitFor();
		assert.equal(await page.locator('[data-testid=audit-row]:not([data-action^="api_key."])').count(), 0);
		await visit(page, 'audit');
	});

	test('usage: the days the team used, in a chart and a table; an empty range', { timeout: 2 * 60_000 }, async () => {
		const page = adminPage;
		await page.getByRole('link', { name: 'Usage', exact: true }).click();
		await page.waitForURL(`${base}/dashboard/usage`);
		const today = new Date().toISOString().slice(0, 10);
		// The default range: the last 30 days, today included.
		assert.equal(await page.getByLabel('To', { exact: true }).inputValue(), today);
		assert.equal(await page.getByLabel('From', { exact: true }).inputValue(), new Date(Date.now() - 29 * 86400e3).toISOString().slice(0, 10));
		const row = page.locator(`[data-testid=usage-row][data-date="${today}"]`);
		await row.waitFor();
		// Today's capsules reserved vCPU- and memory-minutes (from the 10 s samples).
		const cells = await row.locator('td').allTextContents();
		assert.equal(cells.length, 4);
		assert.ok(Number(cells[1].replace(/,/g, '')) > 0, `vCPU reserved today: ${cells}`);
		assert.ok(Number(cells[3].replace(/,/g, '')) > 0, `memory reserved today: ${cells}`);
		await page.getByTestId('usage-total').waitFor();
		await page.waitForFunction(() => Number(document.querySelector('[data-testid=chart-usage]')?.dataset.points) >= 4 * 30);
		const painted = await page.getByTestId('chart-usage').evaluate((c) => {
			const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
			let n = 0;
			for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
			return n;
		});
		assert.ok(painted > 500, `the usage chart is blank (${painted} painted pixels)`);
		await visit(page, 'usage');
		// A range before the team existed: the empty state; the range is in the URL.
		await page.getByLabel('From', { exact: true }).fill('2020-01-01');
		await page.getByLabel('To', { exact: true }).fill('2020-01-31');
		await page.getByRole('button', { name: 'Show' }).click();
		await page.getByTestId('usage-empty').waitFor();
		await page.waitForURL(/from=2020-01-01&to=2020-01-31/);
		await visit(page, 'usage-empty');
	});

	test('templates: build from a recipe and an archive, watch its log stream live, delete; cancel a build', { timeout: 4 * VM }, async () => {
		const page = adminPage;
		await page.getByRole('link', { name: 'Templates' }).click();
		await page.getByRole('heading', { name: 'Templates' }).waitFor();
		await page.locator('[data-testid=template-row][data-name="web-snap"]').waitFor();
		const marker = `made by the web suite ${Date.now()}`;
		await page.getByLabel('Template name').fill('web-tpl');
		await page.getByLabel('Recipe').fill('FROM base\nCOPY greeting.txt /root/greeting.txt\nRUN cat /root/greeting.txt\n');
		await page.getByLabel('Memory (MiB)').fill('512');
		await page.getByTestId('archive-input').setInputFiles({ name: 'files.tar', mimeType: 'application/x-tar', buffer: tar({ 'greeting.txt': marker + '\n' }) });
		await visit(page, 'templates');
		await page.getByRole('button', { name: 'Start build' }).click();
		await page.waitForURL(/\/dashboard\/templates\/web-tpl\?build=bld-/);
		const buildID = new URL(page.url()).searchParams.get('build');
		const b = page.locator(`[data-testid=build-row][data-id="${buildID}"]`);
		// The log is open and streaming while the build runs.
		await b.locator('[data-testid=build-log][data-live=true]').waitFor();
		await b.getByTestId('log-live').waitFor();
		// The RUN step's output (the archive's file) arrives in the stream.
		await b.locator('[data-testid=build-step] [data-stream=stdout]', { hasText: marker }).waitFor({ timeout: 2 * VM });
		await b.getByTestId('build-status').filter({ hasText: 'success' }).waitFor({ timeout: 2 * VM });
		await b.locator('[data-testid=build-log][data-live=false]').waitFor();
		await b.locator('[data-testid=build-step][data-status=success]').first().waitFor();
		assert.equal(await b.locator('[data-testid=build-step][data-status=failed]').count(), 0);
		await page.locator('dt', { hasText: 'Resources' }).waitFor(); // the template's facts
		await visit(page, 'template-build');
		const builds = JSON.parse((await apiAs(page, 'GET', '/v1/templates/web-tpl/builds')).body).builds;
		assert.deepEqual(builds.map((x) => [x.id, x.status]), [[buildID, 'success']]);
		// Delete the template.
		await page.getByRole('link', { name: '← Templates' }).click();
		const r = page.locator('[data-testid=template-row][data-name="web-tpl"]');
		await r.waitFor();
		page.once('dialog', (d) => d.accept());
		await r.getByRole('button', { name: 'Delete template web-tpl' }).click();
		await r.waitFor({ state: 'detached' });
		assert.equal((await apiAs(page, 'GET', '/v1/templates/web-tpl')).status, 404);
		// Another build, cancelled.
		await page.getByLabel('Template name').fill('web-slow');
		await page.getByLabel('Recipe').fill('FROM base\nRUN sleep 600\n');
		await page.getByRole('button', { name: 'Start build' }).click();
		await page.waitForURL(/\/dashboard\/templates\/web-slow\?build=bld-/);
		const slow = page.locator('[data-testid=build-row]').first();
		await slow.getByRole('button', { name: 'Cancel' }).click();
		await slow.getByTestId('build-status').filter({ hasText: 'cancelled' }).waitFor({ timeout: VM });
		await slow.locator('[data-testid=build-log][data-live=false]').waitFor({ timeout: VM });
		const after = JSON.parse((await apiAs(page, 'GET', '/v1/templates/web-slow/builds')).body).builds;
		assert.deepEqual(after.map((x) => x.status), ['cancelled']);
	});

	test('admin pages', async () => {
		const page = adminPage;
		await page.getByRole('link', { name: 'Admin', exact: true }).click();
		await page.getByRole('heading', { name: 'Platform administration' }).waitFor();
		await page.getByRole('cell', { name: member.email }).waitFor();
		await visit(page, 'admin');
		await page.getByRole('link', { name: 'Platform audit log' }).click();
		await page.locator('[data-testid=audit-row]').first().waitFor();
		await visit(page, 'admin-audit');
	});

	test('admin: build a public template, follow its log; every team sees it', { timeout: 3 * VM }, async () => {
		const page = adminPage;
		await page.goto(`${base}/admin`);
		await page.getByRole('link', { name: 'Public templates and builds' }).click();
		await page.getByRole('heading', { name: 'Public templates' }).waitFor();
		const marker = `public build ${Date.now()}`;
		await page.getByLabel('Template name').fill('web-public');
		await page.getByLabel('Recipe').fill(`FROM base\nRUN echo '${marker}'\n`);
		await page.getByLabel('Memory (MiB)').fill('512');
		await page.getByRole('button', { name: 'Start public build' }).click();
		const b = page.locator('[data-testid=build-row][data-template="web-public"]').first();
		await b.locator('[data-testid=build-log]').waitFor();
		await b.locator('[data-testid=build-step] [data-stream=stdout]', { hasText: marker }).waitFor({ timeout: 2 * VM });
		await b.getByTestId('build-status').filter({ hasText: 'success' }).waitFor({ timeout: 2 * VM });
		await page.locator('[data-testid=public-template-row][data-name="web-public"]').waitFor();
		await visit(page, 'admin-templates');
		// The member's team lists it as public (and cannot delete it).
		const mp = pages.member.page;
		await mp.goto(`${base}/dashboard/templates`);
		const r = mp.locator('[data-testid=template-row][data-name="web-public"]');
		await r.getByText('public', { exact: true }).waitFor();
		assert.equal(await r.getByRole('button').count(), 0);
		// No team deletes a public template, an admin of one neither.
		assert.equal((await apiAs(page, 'DELETE', '/v1/templates/web-public')).status, 403);
	});

	test("admin: the platform team's capsules list the public build's VM", async () => {
		const page = adminPage;
		await page.goto(`${base}/admin`);
		await page.getByRole('link', { name: "Platform team's capsules" }).click();
		await page.getByRole('heading', { name: "Platform team's capsules" }).waitFor();
		// The public build ran in a capsule of the platform team, destroyed
		// after the build: hidden until destroyed capsules are shown.
		const builds = JSON.parse((await apiAs(page, 'GET', '/v1/admin/builds?limit=50')).body).builds;
		const build = builds.find((b) => b.template === 'web-public' && b.status === 'success');
		assert.ok(build, 'the public build');
		const listed = JSON.parse((await apiAs(page, 'GET', '/v1/admin/sandboxes?limit=200')).body).sandboxes;
		const vm = listed.find((s) => Object.values(s.metadata || {}).includes(build.id));
		assert.ok(vm, `a platform capsule of build ${build.id}: ${JSON.stringify(listed)}`);
		assert.equal(vm.state, 'stopped');
		// Nothing of another team: the admin's own team's capsule is not listed.
		assert.ok(!listed.some((s) => s.id === capsule), "the admin's team's capsule is listed");
		await page.getByText('The platform team has no live capsules.').waitFor();
		await visit(page, 'admin-capsules-empty');
		await page.getByLabel('Show destroyed capsules').check();
		const r = row(page, vm.id);
		await r.getByTestId('state').filter({ hasText: 'stopped' }).waitFor();
		await r.getByText(vm.template, { exact: true }).waitFor();
		await r.getByText(`${vm.vcpus} vCPU · ${vm.memory_mb} MiB`).waitFor();
		assert.equal(await r.getByRole('link').count(), 0, 'a platform capsule links to the team capsule page');
		assert.equal(await r.getByRole('button').count(), 0, 'a platform capsule has actions');
		const shown = await page.locator('[data-testid=capsule-row]').evaluateAll((rs) => rs.map((x) => x.dataset.id));
		assert.deepEqual(shown.sort(), listed.map((s) => s.id).sort(), 'the page lists what the API lists');
		await visit(page, 'admin-capsules');
	});

	test('BYOC: an admin enables it for the team; register a host (token shown once), delete it', async () => {
		const page = adminPage;
		await page.getByRole('link', { name: 'Admin', exact: true }).click();
		const me = JSON.parse((await apiAs(page, 'GET', '/v1/me')).body);
		const teamName = me.teams.find((t) => t.id === me.team_id).name;
		await Promise.all([
			page.waitForResponse((r) => r.url().includes('/byoc') && r.request().method() === 'PUT'),
			page.getByLabel(`BYOC for ${teamName}`).check()
		]);
		await page.reload(); // the shell reads the team's BYOC flag
		await page.getByRole('link', { name: 'Hosts' }).click();
		await page.getByLabel('Host name').fill('web-host');
		await page.getByLabel('Address (HOST:PORT)').fill('10.9.8.7:7443');
		await page.getByRole('button', { name: 'Register host' }).click();
		const cmd = await page.getByTestId('register-command').textContent();
		assert.match(cmd, /^capsule agent --control-plane http:\/\/\S+ --register \S+ --address 10\.9\.8\.7:7443$/);
		const again = await page.getByTestId('restart-command').textContent();
		assert.match(again, /^capsule agent --control-plane http:\/\/\S+ --address 10\.9\.8\.7:7443$/);
		// The token is shown once: it is not in the host list's answer.
		const token = cmd.match(/--register (\S+)/)[1];
		assert.ok(!(await apiAs(page, 'GET', '/v1/hosts')).body.includes(token), 'the token is listed again');
		const row = page.locator('[data-testid=host-row][data-name="web-host"]');
		await row.waitFor();
		await visit(page, 'hosts');
		await row.getByRole('button', { name: 'Delete web-host' }).click();
		const dialog = page.getByRole('dialog', { name: 'Delete host' });
		await dialog.getByText('No capsule runs on web-host.').waitFor();
		await dialog.getByRole('button', { name: 'Delete host' }).click();
		await row.waitFor({ state: 'detached' });
	});

	test('settings: change the display name', async () => {
		const page = adminPage;
		await page.getByRole('link', { name: 'Settings' }).click();
		await page.getByLabel('Display name').fill('Web Admin');
		await page.getByRole('button', { name: 'Save' }).click();
		await page.getByRole('status').filter({ hasText: 'Saved.' }).waitFor();
		const me = JSON.parse((await apiAs(page, 'GET', '/v1/me')).body);
		assert.equal(me.user.name, 'Web Admin');
		// The password: a wrong current one is refused and changes nothing.
		const next = 'the admin password, changed by the web suite';
		await page.getByLabel('Current password').fill('not the password');
		await page.getByLabel('New password', { exact: true }).fill(next);
		await page.getByLabel('New password again').fill(next);
		await page.getByRole('button', { name: 'Change password' }).click();
		await page.getByRole('alert').filter({ hasText: 'the current password is wrong' }).waitFor();
		const login = (password) =>
			fetch(`${base}/v1/auth/login`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email: admin.email, password }) }).then((r) => r.status);
		// (Logins per e-mail address are limited: the Go tests check the refusal changed nothing.)
		await page.getByLabel('Current password').fill(admin.password);
		await page.getByRole('button', { name: 'Change password' }).click();
		await page.getByRole('status').filter({ hasText: 'Password changed.' }).waitFor();
		assert.equal(await login(admin.password), 401, 'the old password after the change');
		assert.equal(await login(next), 200, 'the new password');
		await visit(page, 'settings');
	});

	test('settings: GitHub is not linked (nor configured): no unlink button; the API refuses an unlink', async () => {
		const page = adminPage;
		await page.goto(`${base}/dashboard/settings`);
		const gh = page.getByTestId('github');
		await gh.getByText('Not linked.').waitFor();
		await gh.getByText('GitHub sign-in is not configured on this server.').waitFor();
		assert.equal(await gh.getByRole('button').count(), 0, 'a link or unlink button without GitHub');
		const me = JSON.parse((await apiAs(page, 'GET', '/v1/me')).body);
		assert.deepEqual(me.oauth, []);
		assert.equal(me.has_password, true);
		// Unlinking what is not linked: 404, and nothing changed.
		const r = await apiAs(page, 'DELETE', '/v1/me/oauth/github');
		assert.equal(r.status, 404, r.body);
		assert.match(JSON.parse(r.body).message, /no github account is linked/);
		assert.deepEqual(JSON.parse((await apiAs(page, 'GET', '/v1/me')).body).oauth, []);
		await visit(page, 'settings-github');
	});

	test('a member cannot see admin pages, and the API refuses too', async () => {
		const page = pages.member.page;
		await page.goto(`${base}/dashboard/capsules`);
		await page.getByRole('link', { name: 'API keys' }).waitFor();
		assert.equal(await page.getByRole('link', { name: 'Admin', exact: true }).count(), 0, 'the member sees the admin entry');
		await page.goto(`${base}/admin`);
		await page.waitForURL(`${base}/dashboard/capsules`);
		for (const p of ['/v1/admin/users', '/v1/admin/teams']) {
			const r = await apiAs(page, 'GET', p);
			assert.equal(r.status, 403, `${p} for a member`);
		}
	});

	test('keyboard: the skip link and the navigation work without a mouse', async () => {
		const page = pages.member.page;
		await page.goto(`${base}/dashboard/keys`);
		await page.getByRole('heading', { name: 'API keys' }).waitFor();
		await page.keyboard.press('Tab');
		assert.equal(await page.evaluate(() => document.activeElement.textContent.trim()), 'Skip to content');
		// Tab to the Team link and follow it with Enter.
		for (let i = 0; i < 15; i++) {
			await page.keyboard.press('Tab');
			if ((await page.evaluate(() => document.activeElement.textContent.trim())) === 'Team') break;
		}
		await page.keyboard.press('Enter');
		await page.waitForURL(`${base}/dashboard/team`);
		await page.locator('[data-testid=member-row]').first().waitFor();
		await visit(page, 'team-as-member');
	});

	test('sign out revokes the session on the server', async () => {
		const rec = pages.member;
		const old = (await rec.ctx.cookies()).find((c) => c.name === 'capsule_session');
		await rec.page.getByRole('button', { name: 'Sign out' }).first().click();
		await rec.page.waitForURL(`${base}/login`);
		const resp = await fetch(`${base}/v1/me`, { headers: { Cookie: `capsule_session=${old.value}` } });
		assert.equal(resp.status, 401, 'a copy of the signed-out cookie still works');
	});
});
