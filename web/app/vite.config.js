import { sveltekit } from '@sveltejs/kit/vite';
import { defineConfig } from 'vite';

export default defineConfig({
	plugins: [sveltekit()],
	build: { sourcemap: false, chunkSizeWarningLimit: 1024 },
	server: { proxy: { '/v1': { target: process.env.CAPSULE_URL || 'http://127.0.0.1:8080', ws: true } } }
});
