// Package envd is the in-sandbox agent. It speaks E2B's envd protocol exactly
// (docs/e2b-compat.md §5–§7) so that the unmodified E2B SDKs can drive a
// Capsule sandbox:
//
//   - process.Process (process.go, procman.go): start, attach, signal and feed
//     processes, with or without a PTY;
//   - filesystem.Filesystem (filesystem.go, watch.go): stat, list, move,
//     remove, make directories and watch them;
//   - HTTP routes (routes.go): /health, /init, /envs, /metrics;
//   - the /files routes, one concern a file: download.go (GET /files),
//     upload.go (POST /files, multipart or octet-stream), compose.go
//     (POST /files/compose), encoding.go (Accept-Encoding negotiation and
//     gzip request bodies), metadata.go (X-Metadata-* headers stored as
//     user.e2b.* xattrs), and files.go (their REST errors, user and path
//     resolution, and the pooled 256 KiB copy buffers); their signatures are
//     checked in auth.go. Transfers avoid copies: a raw upload of announced
//     length (≥ 1 MiB, plain HTTP/1.x, no content coding) is spliced from
//     the socket into its file (splice.go: the connection is taken over
//     once the file is open, the body moves with splice(2) without passing
//     through envd's memory, and the reply closes the connection); other
//     uploads are written to their file in full 256 KiB buffers, a
//     multipart body is parsed behind a 256 KiB reader (mime/multipart's
//     own is 4 KiB), and a regular file is downloaded with
//     http.ServeContent straight on the connection's ResponseWriter, which
//     sends it with sendfile(2) — wrapping that ResponseWriter would lose
//     it. Uploads are not fsynced (as E2B's are not): a file is complete
//     when the reply says so, durable when the guest's page cache is
//     written back.
//
// Server holds the mutable agent state that POST /init sets (access token,
// global environment, default user and workdir). Every request passes through
// the access-token check in auth.go; users and paths are resolved as E2B does
// (users.go). The first /init may set a token; after that /init itself
// requires it (X-Access-Token, compared in constant time), so the token
// cannot be replaced, and the sandbox's environment, user and clock cannot
// be changed, by anyone who merely reaches the guest's port.
//
// The server runs as an ordinary process on a host (tests, benchmarks) or as
// PID 1 of a guest (see package guestinit); Config.Guest enables the side
// effects that only make sense inside a guest (setting the clock, installing
// CA certificates, and Capsule's two fields beyond E2B's: entropy, which is
// mixed into the kernel's input pool and reseeds its generator at once,
// RNDADDENTROPY then RNDRESEEDCRNG, so that guests restored from one
// snapshot, forks and template clones, stop sharing RNG state; and
// hostname, which a fork gets as its own; identity.go).
package envd
