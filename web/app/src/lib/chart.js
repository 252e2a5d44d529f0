// Chart.js for the stats and usage pages, loaded on demand (the first page
// does not pay for it) and registered once.
let loading;

/** loadChart resolves to Chart.js's Chart with the parts the pages use. */
export function loadChart() {
	loading ||= import('chart.js').then((m) => {
		m.Chart.register(m.LineController, m.LineElement, m.PointElement, m.BarController, m.BarElement, m.LinearScale, m.CategoryScale, m.Legend, m.Tooltip);
		return m.Chart;
	});
	return loading;
}

/** palette reads the theme's colours (the charts follow the theme). */
export function palette() {
	const cs = getComputedStyle(document.documentElement);
	const v = (n) => cs.getPropertyValue(n).trim();
	return { text: v('--muted'), grid: v('--border'), a: v('--accent'), b: v('--ok'), c: v('--warn') };
}

/** datasetsPoints counts the points a chart draws (the data-points hooks of the tests). */
export function datasetsPoints(chart) {
	return chart ? chart.data.datasets.reduce((n, d) => n + d.data.filter((p) => p !== null && (typeof p !== 'object' || p.y !== null)).length, 0) : 0;
}
