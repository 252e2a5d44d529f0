import adapter from '@sveltejs/adapter-static';

// A single-page app: every page renders in the browser (ssr off in
// src/routes/+layout.js); index.html is the shell internal/webui answers
// for every path that is not a file. Its one inline boot script is allowed
// by the Content-Security-Policy through its hash, computed by the server.
export default {
	kit: {
		adapter: adapter({ pages: 'build', assets: 'build', fallback: 'index.html', strict: true }),
		version: { pollInterval: 0 },
		// Inline nothing but the boot script: styles are files.
		inlineStyleThreshold: 0,
		output: { preloadStrategy: 'modulepreload' }
	}
};
