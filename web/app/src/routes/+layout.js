// A single-page app: no server rendering, no prerendered pages (the
// server answers the shell for every path).
export const ssr = false;
export const prerender = false;
