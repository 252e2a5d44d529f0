// The signed-in user, their teams and the running-capsules count, shared
// by every page (the sidebar's badge stays in sync with the list).
import { api } from './api.js';

export const session = $state({ me: null, loading: true, running: 0 });

export async function loadMe() {
	session.me = await api('GET', '/v1/me', undefined, { quiet401: true });
	session.loading = false;
	return session.me;
}

export function currentTeam() {
	const me = session.me;
	if (!me) return null;
	return me.teams.find((t) => t.id === me.team_id) || null;
}

export async function refreshRunning() {
	try {
		const out = await api('GET', '/v1/sandboxes?state=running&limit=200');
		session.running = out.sandboxes.length;
	} catch {
		/* the badge keeps its value */
	}
}
