// The API client of the dashboard. The session is the HttpOnly cookie the
// server sets at sign-in (never readable here, never in localStorage);
// unsafe requests carry X-CSRF-Token, the value of the capsule_csrf cookie.

export class ApiError extends Error {
	constructor(status, message) {
		super(message);
		this.status = status;
	}
}

/** The anti-CSRF token: the capsule_csrf cookie's value. */
export function csrfToken() {
	for (const part of document.cookie.split(';')) {
		const [k, ...v] = part.trim().split('=');
		if (k === 'capsule_csrf') return decodeURIComponent(v.join('='));
	}
	return '';
}

/** Listeners called on a 401 (the session is gone). */
const unauthorized = new Set();
export function onUnauthorized(fn) {
	unauthorized.add(fn);
	return () => unauthorized.delete(fn);
}

function headers(method, extra = {}) {
	const h = { Accept: 'application/json', ...extra };
	if (!['GET', 'HEAD', 'OPTIONS'].includes(method)) h['X-CSRF-Token'] = csrfToken();
	return h;
}

async function errorOf(resp) {
	let msg = resp.statusText || `HTTP ${resp.status}`;
	try {
		const body = await resp.json();
		if (body && body.message) msg = body.message;
	} catch {
		/* not JSON */
	}
	return new ApiError(resp.status, msg);
}

/**
 * api sends a JSON request and answers the decoded body (null for 204).
 * @param {string} method
 * @param {string} path
 * @param {any} [body]
 * @param {{quiet401?: boolean, signal?: AbortSignal}} [opts]
 */
export async function api(method, path, body, opts = {}) {
	const init = { method, credentials: 'same-origin', headers: headers(method), signal: opts.signal };
	if (body !== undefined) {
		init.body = JSON.stringify(body);
		init.headers['Content-Type'] = 'application/json';
	}
	const resp = await fetch(path, init);
	if (!resp.ok) {
		const err = await errorOf(resp);
		if (resp.status === 401 && !opts.quiet401) unauthorized.forEach((fn) => fn(err));
		throw err;
	}
	if (resp.status === 204) return null;
	const text = await resp.text();
	return text ? JSON.parse(text) : null;
}

/**
 * upload sends a file with progress (XMLHttpRequest: fetch has no upload
 * progress). onProgress gets a fraction in [0, 1].
 */
export function upload(path, file, onProgress) {
	return send('PUT', path, file, onProgress, 'application/octet-stream');
}

/**
 * postForm sends a multipart/form-data body (a FormData) with upload
 * progress; the browser writes the Content-Type with its boundary.
 */
export function postForm(path, form, onProgress) {
	return send('POST', path, form, onProgress);
}

function send(method, path, body, onProgress, contentType) {
	return new Promise((resolve, reject) => {
		const xhr = new XMLHttpRequest();
		xhr.open(method, path);
		xhr.withCredentials = true;
		xhr.setRequestHeader('X-CSRF-Token', csrfToken());
		xhr.setRequestHeader('Accept', 'application/json');
		if (contentType) xhr.setRequestHeader('Content-Type', contentType);
		xhr.upload.onprogress = (e) => e.lengthComputable && onProgress?.(e.loaded / e.total);
		xhr.onload = () => {
			if (xhr.status >= 200 && xhr.status < 300) {
				onProgress?.(1);
				resolve(xhr.responseText ? JSON.parse(xhr.responseText) : null);
			} else {
				let msg = `HTTP ${xhr.status}`;
				try {
					msg = JSON.parse(xhr.responseText).message || msg;
				} catch {
					/* not JSON */
				}
				reject(new ApiError(xhr.status, msg));
			}
		};
		xhr.onerror = () => reject(new ApiError(0, 'network error'));
		xhr.send(body);
	});
}

/** download fetches a file and hands it to the browser as a download. */
export async function download(path, name) {
	const resp = await fetch(path, { credentials: 'same-origin' });
	if (!resp.ok) throw await errorOf(resp);
	const blob = await resp.blob();
	const url = URL.createObjectURL(blob);
	const a = document.createElement('a');
	a.href = url;
	a.download = name;
	document.body.appendChild(a);
	a.click();
	a.remove();
	setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** fetchText reads a (small) file as text. */
export async function fetchText(path) {
	const resp = await fetch(path, { credentials: 'same-origin' });
	if (!resp.ok) throw await errorOf(resp);
	return resp.text();
}

/**
 * streamLines reads a newline-delimited JSON answer as it arrives, calling
 * onLine with each decoded line; it resolves when the answer ends (or
 * signal aborts it).
 */
export async function streamLines(path, onLine, signal) {
	const resp = await fetch(path, { credentials: 'same-origin', headers: { Accept: 'application/x-ndjson' }, signal });
	if (!resp.ok) throw await errorOf(resp);
	const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
	let buf = '';
	for (;;) {
		const { value, done } = await reader.read();
		if (done) break;
		buf += value;
		let nl;
		while ((nl = buf.indexOf('\n')) >= 0) {
			const line = buf.slice(0, nl).trim();
			buf = buf.slice(nl + 1);
			if (line) onLine(JSON.parse(line));
		}
	}
	if (buf.trim()) onLine(JSON.parse(buf));
}

export const q = encodeURIComponent;
