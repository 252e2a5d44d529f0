// Light and dark themes: the system's choice unless the user picked one
// (remembered in localStorage: a preference, nothing secret).
export function initTheme() {
	const saved = localStorage.getItem('capsule-theme');
	const dark = saved ? saved === 'dark' : matchMedia('(prefers-color-scheme: dark)').matches;
	document.documentElement.dataset.theme = dark ? 'dark' : 'light';
}

export function toggleTheme() {
	const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
	document.documentElement.dataset.theme = next;
	localStorage.setItem('capsule-theme', next);
	return next;
}
